"""The experiment: ``experiment.yaml`` and the files that extend it, checked before any work.

The frozen dataclasses below ARE the schema: their type hints (with ``Annotated`` rules for
ranges) and defaults drive one generic validator, and a few explicit checks add what types
cannot say (files exist, the CRS parses, ``grid.stride <= grid.tile_size``). Coordinates and
lengths are in the experiment's ``crs`` (metres for the default EPSG:3413). Every error is one
line ``FILE: KEY.PATH: expected ..., got ...`` naming the file that set the key. Paths that
may live in Google Cloud Storage (``Location``) accept ``gs://bucket/path``; those are checked
in the bucket (see ``gcs``), with the same messages.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pyproj import CRS
from pyproj.exceptions import CRSError

from . import gcs
from .errors import DeepSegError
from .gcs import GsUri

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_FILES = ("best_model.pth", "normalization_stats.json", "config.yaml")
LOCAL_ONLY = "must be a local folder (it is where gs:// files are kept on this machine)"


class ConfigError(ValueError):
    """A bad experiment, as one line ``FILE: KEY.PATH: expected ..., got ...``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class Rule:
    """A constraint beyond the type; ``expect`` describes the values that pass ``check``."""

    expect: str
    check: Callable[[Any], bool]


def _rule(tp: Any, expect: str, check: Callable[[Any], Any]) -> Any:
    """``tp`` whose values must also pass ``check``; ``expect`` describes them in errors."""
    return Annotated[tp, Rule(expect, check)]


Positive = _rule(float, "a number > 0", lambda v: v > 0)
NonNegative = _rule(float, "a number >= 0", lambda v: v >= 0)
Count = _rule(int, "an integer >= 1", lambda v: v >= 1)
NonNegativeInt = _rule(int, "an integer >= 0", lambda v: v >= 0)
Scale = _rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
Probability = _rule(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
IoU = _rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
Bands = _rule(tuple[Count, ...], "a non-empty list of band numbers (1-based)", bool)
Scales = _rule(tuple[Scale, ...], "a non-empty list of numbers in (0, 1]", bool)
Location = GsUri | Path  # a local path, or gs://bucket/path
Rasters = _rule(tuple[Location, ...], "at least one raster file or glob", bool)
ModelDir = _rule(Location, "a model folder (" + ", ".join(MODEL_FILES) + ")", bool)
Formats = _rule(
    tuple[Literal["cog", "kea"], ...],
    "a list of formats from cog|kea that includes cog",
    lambda v: "cog" in v,
)
NAME = "^[A-Za-z0-9_-]+$"
RegionName = _rule(
    str, f"a region name matching {NAME} (it becomes a file name)", re.compile(NAME).fullmatch
)
BBox = _rule(
    tuple[float, float, float, float],
    "[minx, miny, maxx, maxy] with minx < maxx and miny < maxy",
    lambda b: b[0] < b[2] and b[1] < b[3],
)


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes; relative to the current folder, ``{name}`` = the experiment name.

    With a gs:// ``path`` every file is first written under the local ``scratch`` folder (by
    default runs/{name}) and uploaded when finished."""

    path: Location = Path("runs/{name}")
    scratch: Path | None = None


@dataclass(frozen=True)
class InputConfig:
    """The input mosaic: raster files (absolute, globs expanded) and how to read them."""

    rasters: Rasters
    bands: Bands = (1, 2, 3)
    nodata: float | None = None  # None: each raster's own nodata tag
    resampling: Literal["bilinear", "nearest", "cubic", "average"] = "bilinear"
    cache_dir: Path | None = None  # gs:// rasters: None = read by window over the network


@dataclass(frozen=True)
class GridConfig:
    """The global tile grid: ``resolution`` in CRS units (m) per pixel, sizes in pixels."""

    resolution: Positive = 3.0
    tile_size: Count = 512
    stride: Count = 256
    origin: tuple[float, float] = (-4000100.0, 4100100.0)  # top-left [x, y] in the CRS
    chunk_tiles: Count = 16  # tile strides per chunk side
    tile_list: Location | None = None  # CSV tile_id,minx,miny,maxx,maxy: only these tiles


@dataclass(frozen=True)
class ModelConfig:
    """The model folder (holding ``MODEL_FILES``) and, optionally, the ``data_version`` its
    ``normalization_stats.json`` must name (checked by ``model.read_model_card``)."""

    dir: ModelDir
    expected_data_version: str | None = None


@dataclass(frozen=True)
class InferenceConfig:
    """How the model runs: input scale factors, test-time augmentation, batching, device."""

    scales: Scales = (1.0,)
    tta: Literal["none", "minimal", "standard"] = "none"
    batch_size: Count = 16
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the network (CUDA: faster after a warm-up)
    io_workers: NonNegativeInt | None = None  # None: auto (0 on CPU, several on a GPU)


@dataclass(frozen=True)
class MergeConfig:
    """How overlapping tiles merge; ``threshold`` None means the model's calibrated one,
    ``"calibrated"`` the one ``evaluate.py --calibrate`` wrote (see ``calibration``)."""

    method: Literal["max", "sinusoidal"] = "max"
    threshold: Probability | Literal["calibrated"] | None = None
    products: tuple[Literal["uncertainty", "scales"], ...] = ()
    formats: Formats = ("cog",)  # cog always; kea adds merged/{region}_{prob,binary}.kea


@dataclass(frozen=True)
class VectorizeConfig:
    """Polygon filtering: minimum area in m² and simplification tolerance in m (CRS units)."""

    min_area_m2: NonNegative = 0.0
    simplify_m: NonNegative = 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation against reference polygons (``evaluate.py``): files (absolute once loaded),
    the object-matching IoU and the F-beta ``beta`` used to calibrate the threshold."""

    reference: Path | None = None  # polygons (GPKG, GeoJSON, Shapefile) in any CRS
    reference_layer: str | None = None  # None: the file's first layer
    aoi: Path | None = None  # polygons bounding the evaluation; None: the valid predicted area
    iou: IoU = 0.25
    beta: Positive = 0.5


@dataclass(frozen=True)
class SlurmConfig:
    """Slurm job-array settings (None: the cluster's default); times in minutes."""

    partition: str | None = None
    account: str | None = None
    time_min: Count = 60
    mem_gb: Count | None = None
    cpus_per_task: Count = 4
    gpus_per_node: NonNegativeInt = 0  # requested by the predict stage only
    array_parallelism: Count | None = None
    max_array_size: Count = 1000
    units_per_task: Count | None = None  # None: as few per task as fit one array
    retries: NonNegativeInt = 1  # resubmissions of unfinished units before a stage fails
    poll_s: Positive = 30.0  # seconds between the driver's looks at the tasks
    extra_sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """Where stages run: here (``local``) or as Slurm jobs; ``profile`` as loaded."""

    executor: Literal["local", "slurm"] = "local"
    profile: str | None = None  # a site profile: slurm/NAME.yaml or a path
    slurm: SlurmConfig = SlurmConfig()


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A loaded, checked experiment with every default filled in and paths absolute."""

    name: str
    crs: str = "EPSG:3413"
    output: OutputConfig = OutputConfig()
    input: InputConfig
    grid: GridConfig = GridConfig()
    regions: dict[RegionName, BBox] = field(default_factory=dict)  # bboxes in ``crs``
    model: ModelConfig
    inference: InferenceConfig = InferenceConfig()
    merge: MergeConfig = MergeConfig()
    vectorize: VectorizeConfig = VectorizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    cluster: ClusterConfig = ClusterConfig()
    source: Path = field(metadata={"yaml": False})  # the experiment file loaded (absolute)

    def to_dict(self) -> dict:
        """The resolved experiment as plain YAML-able data (``source`` left out, so it reloads)."""
        data = json.loads(json.dumps(dataclasses.asdict(self), default=str))  # Path -> str
        del data["source"]
        return data


# ---- the generic validator ------------------------------------------------------------------
Key = tuple[str, ...]  # e.g. ("inference", "scales", "[1]")


class _Invalid(Exception):
    def __init__(self, key: Key, text: str) -> None:
        super().__init__(text)
        self.key, self.text = key, text


class _Mismatch(_Invalid):
    """The value at ``key`` is not what its type wants (an enclosing Union/Rule rewords it)."""


def _dotted(key: Key) -> str:
    return "".join(k if k.startswith("[") else "." + k for k in key).lstrip(".")


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML (true, null, 'text'), shortened."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expect(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return args[1].expect
    if origin is Literal:
        return "one of " + "|".join(args) if len(args) > 1 else args[0]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expect(a) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        return "a list" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({Path: "a path", GsUri: "a gs://bucket/path URI"})
    return names.get(tp, "a mapping")


def _build(tp: Any, value: Any, key: Key) -> Any:
    """``value`` checked against and converted to ``tp``; _Invalid names the deepest key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = _Mismatch(key, f"expected {_expect(tp)}, got {_show(value)}")
    if origin is Annotated or origin in (typing.Union, types.UnionType):
        if origin is not Annotated and value is None:
            return None
        options = args[:1] if origin is Annotated else [a for a in args if a is not type(None)]
        for inner in options:  # the first option that takes the value wins
            try:
                out = _build(inner, value, key)
            except _Mismatch as exc:
                if exc.key != key:  # a deeper key is at fault: name it
                    raise
                continue
            if origin is Annotated and not args[1].check(out):
                raise bad
            return out
        raise bad
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return tp(**_fields(tp, value, key))
    if origin is Literal and isinstance(value, str) and value in args:
        return value
    if origin is tuple and isinstance(value, list):
        kinds = (args[0],) * len(value) if args[-1] is Ellipsis else args
        if len(kinds) == len(value):
            return tuple(
                _build(t, v, (*key, f"[{i}]"))
                for i, (t, v) in enumerate(zip(kinds, value, strict=True))
            )
    if origin is dict and isinstance(value, dict):
        return {
            _build(args[0], k, (*key, str(k))): _build(args[1], v, (*key, str(k)))
            for k, v in value.items()
        }
    if tp is GsUri and isinstance(value, str) and value.startswith(gcs.SCHEME):
        try:
            return GsUri.parse(value)
        except ValueError as exc:
            raise _Invalid(key, f"expected a gs://bucket/path URI, got {value!r}: {exc}") from None
    if tp is Path and isinstance(value, str) and value:
        if value.startswith(gcs.SCHEME):
            raise _Invalid(key, f"{LOCAL_ONLY}, got {value!r}")
        return Path(value).expanduser()
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise bad


def _fields(cls: type, data: dict, key: Key) -> dict[str, Any]:
    """Constructor arguments for dataclass ``cls`` from mapping ``data``; defaults filled in."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]
    for k in data:
        if k not in names:
            raise _Invalid((*key, str(k)), f"unknown key, expected one of {', '.join(names)}")
    out = {}
    for f in dataclasses.fields(cls):
        tp, at = hints[f.name], (*key, f.name)
        if f.name in data:
            out[f.name] = _build(tp, data[f.name], at)
        elif dataclasses.is_dataclass(tp):
            out[f.name] = _build(tp, {}, at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if f.metadata.get("yaml", True):
                raise _Invalid(at, f"expected {_expect(tp)}, got nothing (the key is required)")
    return out


# ---- files: YAML, extends, merging --------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (the later one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: list = []
        for k, _ in node.value:
            name = self.construct_object(k, deep=True)
            if name in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {name!r}", k.start_mark
                )
            seen.append(name)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 1e3 (no dot) as a string; YAML 1.2 and users read it as a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _abs(path: Path) -> Path:
    """Absolute and normalised (``..`` removed), symlinks kept as the user wrote them."""
    return Path(os.path.abspath(path))


def _label(path: Path) -> str:
    """A config file as shown in messages: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"{_label(path)}: cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{_label(path)}:{mark.line + 1}" if mark else _label(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: expected valid YAML, got an error: {problem}") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_label(path)}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _read_chain(path: Path) -> list[tuple[Path, dict]]:
    """The file and its ``extends`` ancestors, root first, ``extends`` removed."""
    chain: list[tuple[Path, dict]] = []
    while True:
        data = _read_yaml(path)
        chain.append((path, data))
        parent = data.pop("extends", None)
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{_label(path)}: extends: expected a path, got {_show(parent)}")
        nxt = _abs(path.parent / Path(parent).expanduser())
        if not nxt.is_file():
            raise ConfigError(f"{_label(path)}: extends: expected an existing file, got {nxt}")
        seen = [os.path.realpath(p) for p, _ in chain]
        if os.path.realpath(nxt) in seen:
            loop = " -> ".join(_label(p) for p, _ in chain[seen.index(os.path.realpath(nxt)) :])
            raise ConfigError(
                f"{_label(path)}: extends: expected no cycle, got {loop} -> {_label(nxt)}"
            )
        path = nxt


def _merge(base: dict, over: dict, origins: dict[Key, Path], file: Path, key: Key = ()) -> None:
    """Merge ``over`` into ``base``: dicts recursively, others replace; record who set what."""
    for k, v in over.items():
        at = (*key, str(k))
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, origins, file, at)
            continue
        base[k] = v
        for stale in [o for o in origins if o[: len(at)] == at]:
            del origins[stale]
        origins[at] = file


def _origin(origins: dict[Key, Path], key: Key, default: Path) -> Path:
    """The file that set ``key`` (or the nearest enclosing key); ``default`` for defaults."""
    for n in range(len(key), 0, -1):
        if key[:n] in origins:
            return origins[key[:n]]
    return default


# ---- loading --------------------------------------------------------------------------------
def resolve_experiment_path(name_or_path: str, cwd: Path | None = None) -> Path:
    """The experiment file for a path or a name: an existing file as given (relative to
    ``cwd``), else ``experiments/NAME.yaml`` under ``cwd``, else under the repository root."""
    cwd = Path.cwd() if cwd is None else cwd
    given = Path(name_or_path).expanduser()
    file = name_or_path if name_or_path.endswith((".yaml", ".yml")) else f"{name_or_path}.yaml"
    tried: list[Path] = []
    for candidate in (cwd / given, cwd / "experiments" / file, REPO_ROOT / "experiments" / file):
        candidate = _abs(candidate)
        if candidate.is_file():
            return candidate
        if candidate not in tried:
            tried.append(candidate)
    raise ConfigError(
        f"experiment {name_or_path!r} not found; looked for {', '.join(map(str, tried))}"
    )


def _profile_path(profile: Any, named_in: Path) -> Path:
    """``slurm/NAME.yaml`` of the checkout for a bare name, else a path relative to the file."""
    text = str(profile)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        return REPO_ROOT / "slurm" / f"{text}.yaml"
    return _abs(named_in.parent / Path(text).expanduser())


def _read_profile(profile: Any, named_in: Path) -> dict:
    """A site profile: a YAML file holding only a ``cluster:`` mapping (no nested profile)."""
    path = _profile_path(profile, named_in)
    if not isinstance(profile, str) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in (REPO_ROOT / "slurm").glob("*.yaml")))
        raise ConfigError(
            f"{_label(named_in)}: cluster.profile: expected a profile name ({known}) or a "
            f"YAML path, got {_show(profile)} (looked for {path})"
        )
    data = _read_yaml(path)
    cluster = data.get("cluster")
    if set(data) != {"cluster"} or not isinstance(cluster, dict) or "profile" in cluster:
        raise ConfigError(
            f"{_label(path)}: expected only a 'cluster:' mapping (without 'profile'), "
            f"got keys {', '.join(map(str, data)) or 'none'}"
        )
    return data


def load_experiment(name_or_path: str | Path) -> Experiment:
    """Load, merge (``extends``) and check an experiment; ConfigError on the first problem."""
    source = resolve_experiment_path(str(name_or_path))
    raw: dict = {}
    origins: dict[Key, Path] = {}
    for file, data in _read_chain(source):
        cluster = data.get("cluster")
        if isinstance(cluster, dict) and cluster.get("profile") is not None:
            # a profile applies as if written just before the file that names it
            _merge(
                raw,
                _read_profile(cluster["profile"], file),
                origins,
                _profile_path(cluster["profile"], file),
            )
        _merge(raw, data, origins, file)
    raw.setdefault("name", source.stem)

    def fail(key: Key, text: str) -> ConfigError:
        return ConfigError(f"{_label(_origin(origins, key, source))}: {_dotted(key)}: {text}")

    def base(key: Key) -> Path:
        return _origin(origins, key, source).parent

    try:
        exp = Experiment(**_fields(Experiment, raw, ()), source=source)
    except _Invalid as exc:
        raise fail(exc.key, exc.text) from None
    if not exp.name:
        raise fail(("name",), "expected a non-empty string, got ''")
    try:
        CRS.from_user_input(exp.crs)
    except CRSError:
        raise fail(
            ("crs",), f"expected a CRS pyproj reads (e.g. EPSG:3413), got {exp.crs!r}"
        ) from None
    grid = exp.grid
    if grid.stride > grid.tile_size:
        key = ("grid", "stride" if "stride" in raw.get("grid", {}) else "tile_size")
        raise fail(
            key, f"expected grid.stride <= grid.tile_size, got {grid.stride} > {grid.tile_size}"
        )
    if grid.tile_list is not None:
        key = ("grid", "tile_list")
        try:
            tile_list = _located(grid.tile_list, base(key), lambda p: [p] if p.is_file() else [])
        except DeepSegError as exc:
            raise fail(key, str(exc)) from None
        if not tile_list:
            where = _where(grid.tile_list, base(key))
            raise fail(key, f"expected an existing CSV file, got {where}")
        grid = dataclasses.replace(grid, tile_list=tile_list[0])
    return dataclasses.replace(
        exp,
        output=_output(exp.output, exp.name),
        input=dataclasses.replace(
            exp.input,
            rasters=_rasters(exp.input.rasters, base, fail),
            cache_dir=exp.input.cache_dir
            and _abs(base(("input", "cache_dir")) / exp.input.cache_dir),
        ),
        grid=grid,
        model=dataclasses.replace(exp.model, dir=_model_dir(exp.model.dir, base, fail)),
        evaluate=_evaluate_files(exp.evaluate, base),
    )


def _output(output: OutputConfig, name: str) -> OutputConfig:
    """``{name}`` filled in; local folders absolute (from the current folder)."""
    path = str(output.path).replace("{name}", name)
    if isinstance(output.path, GsUri):
        scratch = str(output.scratch or "runs/{name}").replace("{name}", name)
        return OutputConfig(GsUri.parse(path), _abs(Path.cwd() / scratch))
    scratch = output.scratch and _abs(Path.cwd() / str(output.scratch).replace("{name}", name))
    return OutputConfig(_abs(Path.cwd() / path), scratch)


def _where(entry: Location, base: Path) -> str:
    return str(entry if isinstance(entry, GsUri) else _abs(base / entry))


def _located(entry: Location, base: Path, local: Callable[[Path], list[Path]]) -> list[Location]:
    """What ``entry`` names: ``local(absolute path)`` for a path, the bucket's objects for a
    gs:// URI (``gcs.expand``); a bucket that cannot be read raises DeepSegError."""
    if isinstance(entry, GsUri):
        return list(gcs.expand(entry))
    return list(local(_abs(base / entry)))


def _rasters(entries: tuple[Location, ...], base: Callable, fail: Callable) -> tuple[Location, ...]:
    """Absolute raster paths (or gs:// URIs) in the order given, each glob's matches sorted,
    duplicates dropped."""
    found: dict[Location, None] = {}
    for i, entry in enumerate(entries):
        key = ("input", "rasters", f"[{i}]")
        where = _where(entry, base(key))
        try:
            matches = _located(entry, base(key), _local_rasters)
        except DeepSegError as exc:
            raise fail(key, str(exc)) from None
        if not matches and any(c in where for c in "*?["):
            raise fail(key, f"expected a glob matching at least one file, got {where!r}")
        if not matches:
            raise fail(key, f"expected an existing raster file, got {where!r}")
        found.update(dict.fromkeys(matches))
    return tuple(found)


def _local_rasters(path: Path) -> list[Path]:
    if any(c in str(path) for c in "*?["):
        return [
            p
            for p in sorted(_abs(Path(m)) for m in glob.glob(str(path), recursive=True))
            if p.is_file()
        ]
    return [path] if path.is_file() else []


def _model_dir(folder: Location, base: Callable, fail: Callable) -> Location:
    """The absolute model folder (or gs:// prefix), checked to hold every file in MODEL_FILES."""
    key = ("model", "dir")
    if isinstance(folder, GsUri):
        try:
            present = set(gcs.list_objects(folder))
        except DeepSegError as exc:
            raise fail(key, str(exc)) from None
        for name in MODEL_FILES:
            if name not in present:
                raise fail(key, f"expected a model folder holding {name}, missing {folder / name}")
        return folder
    path = _abs(base(key) / folder)
    if not path.is_dir():
        raise fail(key, f"expected an existing model folder, got {str(path)!r}")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise fail(key, f"expected a model folder holding {name}, missing {path / name}")
    return path


def _evaluate_files(settings: EvaluateConfig, base: Callable) -> EvaluateConfig:
    """``evaluate.reference`` and ``evaluate.aoi`` made absolute. They are checked when
    evaluate.py runs (it may override them), so other stages never fail on them."""

    def resolve(name: str) -> Path | None:
        value = getattr(settings, name)
        return None if value is None else _abs(base(("evaluate", name)) / value)

    return dataclasses.replace(settings, reference=resolve("reference"), aoi=resolve("aoi"))

"""The experiment: ``experiment.yaml`` and the files that extend it, checked before any work.

The frozen dataclasses below ARE the schema: their type hints (with ``Annotated`` rules for
ranges) and defaults drive one generic validator, and a few explicit checks add what types
cannot say (files exist, the CRS parses, ``grid.stride <= grid.tile_size``). Coordinates and
lengths are in the experiment's ``crs`` (metres for the default EPSG:3413). Every error is one
line ``FILE: KEY.PATH: expected ..., got ...`` naming the file that set the key.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_FILES = ("best_model.pth", "normalization_stats.json", "config.yaml")
NOT_YET = "is not supported yet (Google Cloud Storage support is a later feature)"


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
Bands = _rule(tuple[Count, ...], "a non-empty list of band numbers (1-based)", bool)
Scales = _rule(tuple[Scale, ...], "a non-empty list of numbers in (0, 1]", bool)
Rasters = _rule(tuple[Path, ...], "at least one raster file or glob", bool)
ModelDir = _rule(Path, "a model folder (" + ", ".join(MODEL_FILES) + ")", bool)
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
    """Where a run writes; relative to the current folder, ``{name}`` = the experiment name."""

    path: Path = Path("runs/{name}")


@dataclass(frozen=True)
class InputConfig:
    """The input mosaic: raster files (absolute, globs expanded) and how to read them."""

    rasters: Rasters
    bands: Bands = (1, 2, 3)
    nodata: float | None = None  # None: each raster's own nodata tag
    resampling: Literal["bilinear", "nearest", "cubic", "average"] = "bilinear"


@dataclass(frozen=True)
class GridConfig:
    """The global tile grid: ``resolution`` in CRS units (m) per pixel, sizes in pixels."""

    resolution: Positive = 3.0
    tile_size: Count = 512
    stride: Count = 256
    origin: tuple[float, float] = (-4000100.0, 4100100.0)  # top-left [x, y] in the CRS
    chunk_tiles: Count = 16  # tile strides per chunk side
    tile_list: Path | None = None  # CSV tile_id,minx,miny,maxx,maxy: only these tiles


@dataclass(frozen=True)
class ModelConfig:
    """The model folder (holding ``MODEL_FILES``)."""

    dir: ModelDir


@dataclass(frozen=True)
class InferenceConfig:
    """How the model runs: input scale factors, test-time augmentation, batching, device."""

    scales: Scales = (1.0,)
    tta: Literal["none", "minimal", "standard"] = "none"
    batch_size: Count = 16
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class MergeConfig:
    """How overlapping tiles merge; ``threshold`` None means the model's calibrated one."""

    method: Literal["max", "sinusoidal"] = "max"
    threshold: Probability | None = None


@dataclass(frozen=True)
class VectorizeConfig:
    """Polygon filtering: minimum area in m² and simplification tolerance in m (CRS units)."""

    min_area_m2: NonNegative = 0.0
    simplify_m: NonNegative = 0.0


@dataclass(frozen=True)
class SlurmConfig:
    """Slurm job settings (None: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    time_min: Count = 60
    mem_gb: Count | None = None
    cpus_per_task: Count = 4
    gpus_per_node: NonNegativeInt = 0
    array_parallelism: Count | None = None
    max_array_size: Count = 1000
    extra_sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """Where stages run: here (``local``) or as Slurm jobs."""

    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = SlurmConfig()


@dataclass(frozen=True)
class TrainConfig:
    """``train.py``: the built-in U-Net trained on generated 3 m scenes (sizes in pixels).

    Training scenes use seeds ``scene_seed`` .. ``scene_seed + scenes - 1``; the validation
    scene (``validation_seed``), which picks the best step and calibrates the threshold, is
    predicted in ``grid.tile_size`` tiles at ``grid.stride``, as predict.py does.
    """

    output: Path | None = None  # model folder to write; None: {output.path}/model
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: NonNegativeInt = 0  # weight init, crop sampling and augmentation
    scenes: Count = 16
    scene_size: Count = 1024
    scene_seed: NonNegativeInt = 1000
    validation_seed: NonNegativeInt = 999
    validation_size: Count = 1536
    crop_size: Count = 256
    batch_size: Count = 8
    steps: Count = 800
    learning_rate: Positive = 0.003  # peak of the one-cycle schedule (AdamW)
    validate_every: Count = 200  # steps
    base_channels: Count = 8  # U-Net channels at full resolution
    depth: Count = 4  # U-Net pooling steps


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
    cluster: ClusterConfig = ClusterConfig()
    train: TrainConfig = TrainConfig()
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
        return "one of " + "|".join(args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expect(a) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        return "a list" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, "a path" if tp is Path else "a mapping")


def _build(tp: Any, value: Any, key: Key) -> Any:
    """``value`` checked against and converted to ``tp``; _Invalid names the deepest key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = _Mismatch(key, f"expected {_expect(tp)}, got {_show(value)}")
    if origin is Annotated or origin in (typing.Union, types.UnionType):
        if origin is not Annotated and value is None:
            return None
        inner = args[0] if origin is Annotated else next(a for a in args if a is not type(None))
        try:
            out = _build(inner, value, key)
        except _Mismatch as exc:
            raise bad if exc.key == key else exc from None
        if origin is Annotated and not args[1].check(out):
            raise bad
        return out
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
    if tp is Path and isinstance(value, str) and value:
        if value.startswith("gs://"):
            raise _Invalid(key, f"gs:// {key[0]} {NOT_YET}")
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


def load_experiment(name_or_path: str | Path, check_inputs: bool = True) -> Experiment:
    """Load, merge (``extends``) and check an experiment; ConfigError on the first problem.

    ``check_inputs=False`` (for train.py, which reads neither) leaves out the checks that
    ``input.rasters`` and ``model.dir`` exist; their paths are still made absolute."""
    source = resolve_experiment_path(str(name_or_path))
    raw: dict = {}
    origins: dict[Key, Path] = {}
    for file, data in _read_chain(source):
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
        tile_list = _abs(base(("grid", "tile_list")) / grid.tile_list)
        if not tile_list.is_file():
            raise fail(("grid", "tile_list"), f"expected an existing CSV file, got {tile_list}")
        grid = dataclasses.replace(grid, tile_list=tile_list)
    output = _abs(Path.cwd() / str(exp.output.path).replace("{name}", exp.name))
    if check_inputs:
        rasters = _rasters(exp.input.rasters, base, fail)
        model_dir = _model_dir(exp.model.dir, base, fail)
    else:
        keys = [("input", "rasters", f"[{i}]") for i in range(len(exp.input.rasters))]
        rasters = tuple(_abs(base(k) / p) for k, p in zip(keys, exp.input.rasters, strict=True))
        model_dir = _abs(base(("model", "dir")) / exp.model.dir)
    return dataclasses.replace(
        exp,
        output=OutputConfig(output),
        input=dataclasses.replace(exp.input, rasters=rasters),
        grid=grid,
        model=ModelConfig(model_dir),
        train=_train(exp, output, base, fail),
    )


def _train(exp: Experiment, output: Path, base: Callable, fail: Callable) -> TrainConfig:
    """``train`` with its output folder absolute (default ``{output.path}/model``), its sizes
    checked against the U-Net's depth and the grid's tile size."""
    t = exp.train
    factor = 2**t.depth
    if t.crop_size % factor or t.crop_size > t.scene_size:
        raise fail(
            ("train", "crop_size"),
            f"expected a multiple of 2**train.depth = {factor} that is <= train.scene_size "
            f"({t.scene_size}), got {t.crop_size}",
        )
    if t.validation_size < exp.grid.tile_size:
        raise fail(
            ("train", "validation_size"),
            f"expected >= grid.tile_size ({exp.grid.tile_size}), got {t.validation_size}",
        )
    if t.scene_seed <= t.validation_seed < t.scene_seed + t.scenes:
        raise fail(
            ("train", "validation_seed"),
            f"expected a seed outside the training scenes' {t.scene_seed}.."
            f"{t.scene_seed + t.scenes - 1}, got {t.validation_seed}",
        )
    folder = output / "model" if t.output is None else _abs(base(("train", "output")) / t.output)
    return dataclasses.replace(t, output=folder)


def _rasters(entries: tuple[Path, ...], base: Callable, fail: Callable) -> tuple[Path, ...]:
    """Absolute raster paths in the order given, each glob's matches sorted, duplicates dropped."""
    found: dict[Path, None] = {}
    for i, entry in enumerate(entries):
        key = ("input", "rasters", f"[{i}]")
        path = _abs(base(key) / entry)
        if any(c in str(path) for c in "*?["):
            matches = sorted(_abs(Path(p)) for p in glob.glob(str(path), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise fail(key, f"expected a glob matching at least one file, got {str(path)!r}")
        elif path.is_file():
            matches = [path]
        else:
            raise fail(key, f"expected an existing raster file, got {str(path)!r}")
        found.update(dict.fromkeys(matches))
    return tuple(found)


def _model_dir(folder: Path, base: Callable, fail: Callable) -> Path:
    """The absolute model folder, checked to hold every file in MODEL_FILES."""
    key = ("model", "dir")
    path = _abs(base(key) / folder)
    if not path.is_dir():
        raise fail(key, f"expected an existing model folder, got {str(path)!r}")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise fail(key, f"expected a model folder holding {name}, missing {path / name}")
    return path

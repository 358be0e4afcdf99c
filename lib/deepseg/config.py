"""The experiment: ``experiment.yaml`` and the files that extend it, checked before any work.

Loading reads the file and its ``extends`` ancestors (and a ``cluster.profile``), merges them
key by key, builds the schema (``schema``) through the generic validator (``validation``),
then adds the checks types cannot say (files exist, the CRS parses, ``grid.stride <=
grid.tile_size``) and makes paths absolute. Every error is one line ``FILE: KEY.PATH:
expected ..., got ...`` naming the file that set the key; gs:// paths are checked in the
bucket (see ``gcs``) with the same messages. The schema's names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pyproj import CRS
from pyproj.exceptions import CRSError

from . import gcs
from .errors import DeepSegError
from .gcs import GsUri
from .schema import (  # noqa: F401 - re-exported: the experiment's types live in schema
    MODEL_FILES,
    ClusterConfig,
    EvaluateConfig,
    Experiment,
    GridConfig,
    InferenceConfig,
    InputConfig,
    Location,
    MergeConfig,
    ModelConfig,
    OutputConfig,
    SlurmConfig,
    TrainConfig,
    VectorizeConfig,
)
from .validation import Invalid, Key, build_fields, dotted, show

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A bad experiment, as one line ``FILE: KEY.PATH: expected ..., got ...``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


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
            raise ConfigError(f"{_label(path)}: extends: expected a path, got {show(parent)}")
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
            f"YAML path, got {show(profile)} (looked for {path})"
        )
    data = _read_yaml(path)
    cluster = data.get("cluster")
    if set(data) != {"cluster"} or not isinstance(cluster, dict) or "profile" in cluster:
        raise ConfigError(
            f"{_label(path)}: expected only a 'cluster:' mapping (without 'profile'), "
            f"got keys {', '.join(map(str, data)) or 'none'}"
        )
    return data


def load_experiment(name_or_path: str | Path, check_inputs: bool = True) -> Experiment:
    """Load, merge (``extends``) and check an experiment; ConfigError on the first problem.

    ``check_inputs=False`` (for train.py, which reads neither) leaves out the checks that
    ``input.rasters`` and ``model.dir`` exist; local paths are still made absolute."""
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
        return ConfigError(f"{_label(_origin(origins, key, source))}: {dotted(key)}: {text}")

    def base(key: Key) -> Path:
        return _origin(origins, key, source).parent

    try:
        exp = Experiment(**build_fields(Experiment, raw, ()), source=source)
    except Invalid as exc:
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
    if check_inputs:
        rasters = _rasters(exp.input.rasters, base, fail)
        model_dir = _model_dir(exp.model.dir, base, fail)
    else:
        keys = [("input", "rasters", f"[{i}]") for i in range(len(exp.input.rasters))]
        rasters = tuple(
            _unchecked(base(k), p) for k, p in zip(keys, exp.input.rasters, strict=True)
        )
        model_dir = _unchecked(base(("model", "dir")), exp.model.dir)
    output = _output(exp.output, exp.name)
    return dataclasses.replace(
        exp,
        output=output,
        input=dataclasses.replace(
            exp.input,
            rasters=rasters,
            cache_dir=exp.input.cache_dir
            and _abs(base(("input", "cache_dir")) / exp.input.cache_dir),
        ),
        grid=grid,
        model=dataclasses.replace(exp.model, dir=model_dir),
        evaluate=_evaluate_files(exp.evaluate, base),
        train=_train(exp, output, base, fail),
    )


def _unchecked(base: Path, entry: Location) -> Location:
    """A gs:// URI as given, a local path absolute (relative to ``base``)."""
    return entry if isinstance(entry, GsUri) else _abs(base / entry)


def _train(exp: Experiment, output: OutputConfig, base: Callable, fail: Callable) -> TrainConfig:
    """``train`` with its output folder absolute (default ``{output.path}/model``, or under
    ``output.scratch`` for a gs:// run), its sizes checked against the U-Net's depth and the
    grid's tile size."""
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
    if t.output is not None:
        return dataclasses.replace(t, output=_abs(base(("train", "output")) / t.output))
    local = output.path if isinstance(output.path, Path) else output.scratch
    return dataclasses.replace(t, output=local / "model")


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

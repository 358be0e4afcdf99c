"""The experiment: ``experiment.yaml`` and the files that extend it, checked before any work.

Loading reads the file and its ``extends`` ancestors (and a ``cluster.profile``) merged key
by key (``files``), builds the schema (``schema``) through the generic validator
(``validation``), then adds the checks types cannot say (files exist, the CRS parses,
``grid.stride <= grid.tile_size``) and makes paths absolute. Every error is one line ``FILE:
KEY.PATH: expected ..., got ...`` naming the file that set the key; gs:// paths are checked
in the bucket (``storage.gcs``, imported only then) with the same messages.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Callable
from pathlib import Path

from pyproj import CRS
from pyproj.exceptions import CRSError

from ..core.errors import DeepSegError
from ..storage.remote import GsUri
from .files import ConfigError, abs_path, label, origin, read_merged, resolve_experiment_path
from .schema import MODEL_FILES, EvaluateConfig, Experiment, Location, OutputConfig, TrainConfig
from .validation import Invalid, Key, build_fields, dotted


def load_experiment(name_or_path: str | Path, check_inputs: bool = True) -> Experiment:
    """Load, merge (``extends``) and check an experiment; ConfigError on the first problem.

    ``check_inputs=False`` (for train.py, which reads neither) leaves out the checks that
    ``input.rasters`` and ``model.dir`` exist; local paths are still made absolute."""
    source = resolve_experiment_path(str(name_or_path))
    raw, origins = read_merged(source)
    raw.setdefault("name", source.stem)

    def fail(key: Key, text: str) -> ConfigError:
        return ConfigError(f"{label(origin(origins, key, source))}: {dotted(key)}: {text}")

    def base(key: Key) -> Path:
        return origin(origins, key, source).parent

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
            and abs_path(base(("input", "cache_dir")) / exp.input.cache_dir),
        ),
        grid=grid,
        model=dataclasses.replace(exp.model, dir=model_dir),
        evaluate=_evaluate_files(exp.evaluate, base),
        train=_train(exp, output, base, fail),
    )


def _unchecked(base: Path, entry: Location) -> Location:
    """A gs:// URI as given, a local path absolute (relative to ``base``)."""
    return entry if isinstance(entry, GsUri) else abs_path(base / entry)


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
    if t.validation_fold >= t.folds:
        raise fail(
            ("train", "validation_fold"),
            f"expected a fold below train.folds ({t.folds}), got {t.validation_fold}",
        )
    local = output.path if isinstance(output.path, Path) else output.scratch

    def resolve(name: str) -> Path | None:
        value = getattr(t, name)
        return None if value is None else abs_path(base(("train", name)) / value)

    rasters: dict[Location, None] = {}  # globs expanded; create_training_data checks them
    for i, entry in enumerate(t.rasters):
        where = base(("train", "rasters", f"[{i}]"))
        matches = [] if isinstance(entry, GsUri) else _local_rasters(abs_path(where / entry))
        rasters.update(dict.fromkeys(matches or [_unchecked(where, entry)]))
    return dataclasses.replace(
        t,
        output=resolve("output") or local / "model",
        rasters=tuple(rasters),
        labels=resolve("labels"),
        aoi=resolve("aoi"),
        store=resolve("store") or local / "training" / "tiles.h5",
    )


def _output(output: OutputConfig, name: str) -> OutputConfig:
    """``{name}`` filled in; local folders absolute (from the current folder)."""
    path = str(output.path).replace("{name}", name)
    if isinstance(output.path, GsUri):
        scratch = str(output.scratch or "runs/{name}").replace("{name}", name)
        return OutputConfig(GsUri.parse(path), abs_path(Path.cwd() / scratch))
    scratch = output.scratch and abs_path(Path.cwd() / str(output.scratch).replace("{name}", name))
    return OutputConfig(abs_path(Path.cwd() / path), scratch)


def _where(entry: Location, base: Path) -> str:
    return str(entry if isinstance(entry, GsUri) else abs_path(base / entry))


def _located(entry: Location, base: Path, local: Callable[[Path], list[Path]]) -> list[Location]:
    """What ``entry`` names: ``local(absolute path)`` for a path, the bucket's objects for a
    gs:// URI (``gcs.expand``); a bucket that cannot be read raises DeepSegError."""
    if isinstance(entry, GsUri):
        from ..storage import gcs  # the Google Cloud client loads only for gs:// paths

        return list(gcs.expand(entry))
    return list(local(abs_path(base / entry)))


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
            for p in sorted(abs_path(Path(m)) for m in glob.glob(str(path), recursive=True))
            if p.is_file()
        ]
    return [path] if path.is_file() else []


def _model_dir(folder: Location, base: Callable, fail: Callable) -> Location:
    """The absolute model folder (or gs:// prefix), checked to hold every file in MODEL_FILES."""
    key = ("model", "dir")
    if isinstance(folder, GsUri):
        try:
            from ..storage import gcs

            present = set(gcs.list_objects(folder))
        except DeepSegError as exc:
            raise fail(key, str(exc)) from None
        for name in MODEL_FILES:
            if name not in present:
                raise fail(key, f"expected a model folder holding {name}, missing {folder / name}")
        return folder
    path = abs_path(base(key) / folder)
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
        return None if value is None else abs_path(base(("evaluate", name)) / value)

    return dataclasses.replace(settings, reference=resolve("reference"), aoi=resolve("aoi"))

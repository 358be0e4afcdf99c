"""The final check of a run: ``deepseg check -e NAME`` (``DeepSeg.sh NAME check``).

Compares the manifests and outputs with the tile grid and reports, with ids:

- ``chunks_not_staged``: chunks of the grid (``stages.tiles.tiling_units``: a tile over an input)
  that create_tiles did not finish; their tiles are unknown until staged.
- ``tiles_not_predicted``: per chunk, the tiles create_tiles staged (its tile store's table,
  cut to ``grid.tile_list``) that predict did not finish (no record, interrupted, failed
  with its error), whose probability store is missing, or that the store does not list.
  When predict's tile count equals create_tiles' (the common case) no store is opened.
- ``chunks_missing_from_merged``: per region (``regions:``, else "all"), the chunks whose
  predicted pixels (valid in the probability store) are nodata in the region's merged
  raster, or all its chunks when the region was not merged or its rasters are missing.
  The binary COG is read (nodata 255 exactly where the probability COG has -1: both come
  from the same windows; it reads about 20 times faster); a store is read only where the
  merged raster has nodata inside the store's valid box.
- ``polygons_outside_predicted_area``: polygons of ``vectors/rts_predictions.gpkg`` with
  area where no probability store predicted (pixel centres inside the polygon whose fused
  probability is nodata, plus any part beyond every store), in m² of ``crs``.
- ``outputs_missing``: merged rasters or the GeoPackage that are not there.

Writes ``logs/check.json`` (everything, ``ok`` true when nothing is reported) and a summary
under ``check`` in the run log; logs counts and the first ids; exits 1 when anything is
reported (``deepseg check``). Memory holds one chunk's windows at a time (and the polygons' table).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ..config import Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..geo.grid import PixelBox, TileGrid
from ..geo.tile_list import TileList, listed_tiles
from ..run.journal import now_iso
from ..run.manifest import UnitState, fold
from ..run.runlog import update_run_log
from ..stages.assembly import StoreIndex, regions
from ..stages.layers import BINARY_NODATA
from ..stages.merge import region_files
from ..stages.tiles import tiling_units
from ..storage.paths import RunPaths, atomic_path
from ..stores.layout import holds_probability
from ..stores.prob_store import read_prob_tile_ids, read_prob_window
from ..stores.tile_store import read_tile_ids
from .polygon_coverage import polygons_outside

log = logging.getLogger(__name__)
SHOWN = 10  # ids logged per finding; logs/check.json holds them all
FINDINGS = (
    "chunks_not_staged",
    "tiles_not_predicted",
    "chunks_missing_from_merged",
    "polygons_outside_predicted_area",
    "outputs_missing",
)


def _not_finished(state: UnitState | None, stage: str) -> str | None:
    """Why a unit is not done (None when it is)."""
    if state is None:
        return f"{stage} has no record of it"
    if state.status == "running":
        return f"{stage} started it but did not finish (interrupted)"
    if state.status == "failed":
        return f"{stage} failed: {state.error}"
    return None


def chunks_not_staged(units: list[str], staged: dict[str, UnitState]) -> list[dict[str, Any]]:
    """The grid's chunks that create_tiles did not finish."""
    found = []
    for unit in units:
        why = _not_finished(staged.get(unit), "create_tiles")
        if why is not None:
            found.append({"chunk": unit, "reason": why})
    return found


def _staged_ids(paths: RunPaths, unit: str, listed: TileList | None) -> list | None:
    """The tiles staged for ``unit`` (in the tile list, if one is set); None: store gone."""
    store = paths.tile_store(unit)
    if not paths.done(store):
        return None
    ids = read_tile_ids(paths.local(store))
    if listed is None:
        return sorted(ids)
    here = {TileGrid.tile_id(*t) for t in listed.in_chunk(*TileGrid.parse_chunk_id(unit))}
    return sorted(t for t in ids if t in here)


def _chunk_tiles_missing(
    paths: RunPaths,
    unit: str,
    staged: UnitState,
    predicted: UnitState | None,
    listed: TileList | None,
) -> dict[str, Any] | None:
    """The staged tiles of one chunk that predict left out, or None."""
    n_staged = int(staged.counts.get("tiles", 0))
    why = _not_finished(predicted, "predict")
    store = paths.prob_store(unit)
    if why is None and not paths.done(store):
        why = f"its probability store {store.name} is missing"
    if why is None and predicted is not None and predicted.counts.get("tiles") == n_staged:
        return None  # every staged tile went into the store
    expected = _staged_ids(paths, unit, listed)
    if why is None:
        got = read_prob_tile_ids(paths.local(store))
        if got is None or expected is None:
            return None  # nothing to compare with
        why = f"not in its probability store {store.name}"
        expected = sorted(set(expected) - set(got))
        if not expected:
            return None
    count = n_staged if expected is None else len(expected)
    return {"chunk": unit, "reason": why, "n_tiles": count, "tiles": expected}


def tiles_not_predicted(
    exp: Experiment, paths: RunPaths, staged: dict[str, UnitState]
) -> list[dict[str, Any]]:
    """Per chunk with tiles, the staged tiles that are not in a probability store."""
    listed = listed_tiles(exp, TileGrid.from_experiment(exp))
    predicted = fold(paths, "predict")
    with_tiles = [s for _, s in sorted(staged.items()) if s.status == "done" and s.outputs]
    found = []
    for state in progress(with_tiles, len(with_tiles), "check: tiles", log):
        missing = _chunk_tiles_missing(paths, state.unit, state, predicted.get(state.unit), listed)
        if missing is not None:
            found.append(missing)
    return found


def _unmerged(exp: Experiment, paths: RunPaths, state: UnitState | None, region: str) -> str | None:
    """Why region ``region`` has no usable merged rasters (None when it has)."""
    why = _not_finished(state, "merge")
    if why is not None:
        return why
    gone = [p.name for p in region_files(exp, region) if not paths.done(p)]
    return f"merged raster(s) missing: {', '.join(gone)}" if gone else None


def _missing_px(store: Path, window: PixelBox, src: rasterio.DatasetReader, at: PixelBox) -> int:
    """Pixels of ``window`` that the store predicted but the merged raster (covering grid
    box ``at``) holds as nodata or does not reach."""
    holes = np.ones((window.height, window.width), dtype=bool)
    inside = window.intersection(at)
    if inside is not None:
        rows, cols = inside.slices_in(at)
        merged = src.read(1, window=Window(cols.start, rows.start, inside.width, inside.height))
        holes[inside.slices_in(window)] = merged == BINARY_NODATA
    if not holes.any():
        return 0
    part = read_prob_window(store, window)
    if part is None:
        return 0
    predicted = holds_probability(part.prob)
    return int((holes[part.box.slices_in(window)] & predicted).sum())


def chunks_missing_from_merged(
    exp: Experiment, paths: RunPaths, grid: TileGrid, index: StoreIndex
) -> list[dict[str, Any]]:
    """Per region, the chunks whose predicted pixels its merged rasters lack."""
    states = fold(paths, "merge")
    found: list[dict[str, Any]] = []
    for region, box in regions(exp, grid, index).items():
        parts = {c: b.intersection(box) for c, b in sorted(index.valid_boxes.items())}
        parts = {c: p for c, p in parts.items() if p is not None}
        why = _unmerged(exp, paths, states.get(region), region)
        if why is not None:
            found += [{"chunk": grid.chunk_id(*c), "region": region, "reason": why} for c in parts]
            continue
        first = paths.region_layer(region, "class" if index.classes else "binary")
        with rasterio.open(paths.local(first)) as src:
            at = grid.box_of_bounds(tuple(src.bounds))
            for chunk, part in progress(parts.items(), len(parts), f"check: {region}", log):
                n = _missing_px(index.paths[chunk], part, src, at)
                if n:
                    reason = "predicted pixels are nodata in (or beyond) the merged raster"
                    entry = {"chunk": grid.chunk_id(*chunk), "region": region, "reason": reason}
                    found.append({**entry, "missing_px": n})
    return found


def check_run(exp: Experiment) -> dict[str, Any]:
    """Check the run of ``exp``; returns the report (see the module docstring)."""
    paths = RunPaths.of(exp)
    paths.refresh()
    grid = TileGrid.from_experiment(exp)
    units = tiling_units(exp)
    staged = fold(paths, "create_tiles")
    report: dict[str, Any] = {"experiment": exp.name, "checked": now_iso(), "not_checked": {}}
    report["chunks_not_staged"] = chunks_not_staged(units, staged)
    report["tiles_not_predicted"] = tiles_not_predicted(exp, paths, staged)
    report["chunks_missing_from_merged"], report["polygons_outside_predicted_area"] = [], []
    report["outputs_missing"] = []
    try:
        index = StoreIndex.local(paths)
    except DeepSegError as exc:
        report["not_checked"]["merged rasters and polygons"] = str(exc)
        index = None
    if index is not None:
        report["chunks_missing_from_merged"] = chunks_missing_from_merged(exp, paths, grid, index)
        report["outputs_missing"] = [
            paths.show(p)
            for region in regions(exp, grid, index)
            for p in region_files(exp, region)
            if not paths.done(p)
        ]
        if not paths.done(paths.polygons):
            report["outputs_missing"].append(paths.show(paths.polygons))
        elif not index.classes:  # a K-class run's layers per class are not checked here
            found = polygons_outside(exp, paths, grid, index)
            report["polygons_outside_predicted_area"] = found
    report["counts"] = {
        "chunks": len(units),
        **{key: len(report[key]) for key in FINDINGS},
        "tiles_not_predicted": sum(e["n_tiles"] for e in report["tiles_not_predicted"]),
    }
    report["ok"] = not any(report[key] for key in FINDINGS) and not report["not_checked"]
    return report


def write_report(exp: Experiment, report: dict[str, Any]) -> Path:
    """``logs/check.json`` (atomic) and the summary in the run log."""
    paths = RunPaths.of(exp)
    target = paths.logs / "check.json"
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: report[k] for k in ("checked", "ok", "counts", "not_checked")}
    update_run_log(paths, check=summary)
    return target


def _log_findings(report: dict[str, Any], target: Path) -> None:
    for key in FINDINGS:
        entries = report[key]
        if entries:
            ids = [e if isinstance(e, str) else e.get("chunk", e.get("rts_id")) for e in entries]
            more = f" ... (+{len(ids) - SHOWN})" if len(ids) > SHOWN else ""
            count = report["counts"][key]
            log.error("check: %s: %d: %s%s", key, count, ", ".join(map(str, ids[:SHOWN])), more)
    for what, why in report["not_checked"].items():
        log.error("check: %s not checked: %s", what, why)
    verdict = "OK: nothing missing" if report["ok"] else "problems found"
    log.info(
        "check: %s (%d chunks of the grid); report %s", verdict, report["counts"]["chunks"], target
    )


def check(exp: Experiment, **_: object) -> dict[str, Any]:
    """Check, write the report, log it; ``report["ok"]`` is False when anything is reported
    (``deepseg check`` then exits with status 1)."""
    report = check_run(exp)
    target = write_report(exp, report)
    _log_findings(report, target)
    return report

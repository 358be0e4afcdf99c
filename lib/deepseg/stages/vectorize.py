"""Stage ``vectorize``: the fused map -> polygons in one GeoPackage, chunk by chunk.

Units are chunk cores holding predictions. Each writes its polygon pieces (see ``pieces``)
and its footprint to ``vectors/pieces/{chunk}.fgb``; ``gather`` then streams the closed
pieces to ``vectors/rts_predictions.gpkg`` and joins the open ones (cut by a core edge) into
one polygon each (an edge joins them, a corner does not). Memory: a chunk or the open pieces.
Only a core's hot blocks are read and traced (``hot_blocks``).

Attributes, measured in ``crs`` (EPSG:3413 metres by default) before simplification:
``rts_id`` (``rts_{col}_{row}``, the object's first pixel in raster order, global grid
pixels: the same whatever the chunking), ``region`` (the region overlapping it most; objects
outside every region are dropped), ``area_m2``, ``perimeter_m`` (holes included),
``centroid_lat``/``centroid_lon`` (WGS84), ``mean_prob``/``max_prob`` (over its pixels),
``detection_scale`` (the scales that reached the threshold on it, e.g. ``1.0,0.5``) and
``tile_ids`` (the grid tiles its pixels fall in). Layer ``footprints``: the predicted (valid)
area, one polygon per chunk, so downstream tools can deduplicate overlapping runs.

A K-class run (see ``layers``) gets one layer per class of ``vectorize.classes`` (default:
every class but the first, the background) instead of ``rts_predictions``: its objects are
the 4-connected areas where that class is the most probable, with ``class``, ids named after
it and ``mean_prob``/``max_prob`` of that class. A K-class core is read whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..config import Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..geo.grid import TileGrid
from ..model.threshold import merge_threshold, threshold_identity
from ..run.driver import run
from ..run.manifest import digest, done_runs
from ..run.runlog import update_run_log
from ..run.stage import Stage, UnitResult
from ..storage.paths import CHUNK_PIECES, RunPaths, atomic_path
from ..stores.layout import PROB_NODATA, holds_probability
from .assembly import StoreIndex, assemble, check_predicted, regions
from .hot_blocks import CoreMap, assemble_hot
from .pieces import chunk_footprint, chunk_pieces
from .polygons import (
    COLUMNS,
    FOOTPRINTS,
    LAYER,
    PIECE_TYPES,
    PolygonWriter,
    empty_pieces,
    finalize,
    join_open,
    read_pieces,
)

log = logging.getLogger(__name__)
__all__ = ["COLUMNS", "LAYER", "STAGE", "vectorize"]
CLASS_ON = float(np.finfo(np.float32).tiny)  # a class's pixels carry its probability, >= 1/K


def polygon_layers(exp: Experiment, index: StoreIndex) -> list[tuple[str, str | None]]:
    """(GeoPackage layer, class) pairs: (rts_predictions, None), or one per K-class class."""
    if not index.classes:
        return [(LAYER, None)]
    chosen = list(exp.vectorize.classes) or list(index.classes[1:])
    wrong = [c for c in chosen if c not in index.classes or c == FOOTPRINTS]
    if wrong:
        raise DeepSegError(
            f"vectorize.classes: {wrong[0]!r} is not a class of this run "
            f"({', '.join(index.classes)}) or is the layer name {FOOTPRINTS!r}"
        )
    return [(c, c) for c in chosen]


def vectorize_units(exp: Experiment) -> list[str]:
    """Chunks whose core holds a predicted pixel (of any store) inside a region."""
    grid = TileGrid.from_experiment(exp)
    index = StoreIndex.of_run(RunPaths.of(exp))
    polygon_layers(exp, index)  # a wrong vectorize.classes fails before any work
    boxes = list(regions(exp, grid, index).values())
    n, units = grid.chunk_px, set()
    for valid in index.valid_boxes.values():
        for box in (valid.intersection(b) for b in boxes):
            if box is not None:
                units.update(
                    grid.chunk_id(c, r)
                    for r in range(box.row0 // n, (box.row1 - 1) // n + 1)
                    for c in range(box.col0 // n, (box.col1 - 1) // n + 1)
                )
    return sorted(units)


class VectorizeWorker:
    """Traces the pieces of chunk cores; the stores are indexed once per process."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.paths = RunPaths.of(exp)
        self.index = StoreIndex.local(self.paths)
        self.threshold = merge_threshold(exp, self.index.threshold)
        self.classes = [c for _, c in polygon_layers(exp, self.index) if c is not None]

    def run(self, unit: str) -> UnitResult:
        core = self.grid.chunk_core(*TileGrid.parse_chunk_id(unit))
        frame, valid = self._class_pieces(core) if self.classes else self._pieces(core)
        footprint = chunk_footprint(valid, core, self.grid)
        if footprint is None:
            return UnitResult([], {"pieces": 0})
        frame["kind"] = "piece"
        # typed values in the footprint row too, so no column is written as text or float
        values = {c: pd.Series([0], dtype=t) for c, t in PIECE_TYPES.items()}
        values.update({"class": pd.Series([""])} if self.classes else {})
        foot = gpd.GeoDataFrame(
            {**values, "kind": ["footprint"]}, geometry=[footprint], crs=self.exp.crs
        )
        target = self.paths.chunk_pieces(unit)
        with atomic_path(target) as tmp:
            pd.concat([frame, foot], ignore_index=True).to_file(  # layer: not the temp name
                tmp, layer=unit, driver="FlatGeobuf", geometry_type="MultiPolygon"
            )
        return UnitResult([target], {"pieces": len(frame), "open_pieces": int(frame.open.sum())})

    def _pieces(self, core) -> tuple[gpd.GeoDataFrame, np.ndarray]:
        """The pieces at the threshold, read in the core's hot blocks, and its valid pixels."""
        core_map = assemble_hot(self.grid, self.index, core, self.threshold)
        return chunk_pieces(core_map, self.grid, self.threshold, self.exp.crs), core_map.valid

    def _class_pieces(self, core) -> tuple[gpd.GeoDataFrame, np.ndarray]:
        """Per chosen class, the pieces where it is the most probable (column ``class``)."""
        prob, hits = assemble(self.grid, self.index, core)
        valid, top = holds_probability(prob), prob.argmax(axis=0)
        frames = []
        for name in self.classes:
            k = self.index.classes.index(name)
            mine = np.where(valid, np.where(top == k, prob[k], 0.0), PROB_NODATA)
            side = max(core.height, core.width)
            m = CoreMap(core, mine.astype(np.float32), hits, valid, np.ones((1, 1), bool), side)
            pieces = chunk_pieces(m, self.grid, CLASS_ON, self.exp.crs)
            frames.append(pieces.assign(**{"class": name}))
        return pd.concat(frames, ignore_index=True), valid


def _region_geoms(
    exp: Experiment, grid: TileGrid, index: StoreIndex
) -> dict[str, shapely.Geometry]:
    return {n: shapely.box(*grid.bounds(b)) for n, b in regions(exp, grid, index).items()}


def gather(exp: Experiment, redo: bool) -> dict[str, int]:
    """Stream every chunk's closed pieces, then the joined open ones, into the GeoPackage
    (one layer, or one per class of a K-class run)."""
    paths = RunPaths.of(exp)
    if paths.polygons.exists() and not redo:
        return {}
    grid, index = TileGrid.from_experiment(exp), StoreIndex.of_run(paths)
    boxes, scales, layers = (
        _region_geoms(exp, grid, index),
        index.scales,
        polygon_layers(exp, index),
    )
    units = set(vectorize_units(exp))  # pieces of chunks no longer in a region are stale
    files = [f for f in paths.finished(paths.pieces, ".fgb") if f.stem in units]
    area_m2, open_parts, footprints = 0.0, {layer: [] for layer, _ in layers}, []
    with atomic_path(paths.polygons) as tmp:
        out = PolygonWriter(tmp)
        for path in progress(files, len(files), "vectorize: gathering chunks", log):
            pieces, footprint = read_pieces(paths.local(path))
            footprints.append({"chunk_id": path.stem, "geometry": footprint})
            for layer, name in layers:
                mine = pieces if name is None else pieces[pieces["class"] == name]
                open_parts[layer].append(mine[mine["open"]])
                closed = finalize(mine[~mine["open"]], exp, boxes, scales, name)
                out.add(closed, layer)
                area_m2 += closed.area_m2.sum()
        for layer, name in layers:
            open_pieces = pd.concat([empty_pieces(exp), *open_parts[layer]], ignore_index=True)
            if len(open_pieces):
                joined = join_open(gpd.GeoDataFrame(open_pieces, crs=exp.crs))
                objects = finalize(joined, exp, boxes, scales, name)
                out.add(objects, layer)
                area_m2 += objects.area_m2.sum()
            if not out.rows.get(layer):
                out.add(finalize(empty_pieces(exp), exp, boxes, scales, name), layer, force=True)
        foot = gpd.GeoDataFrame(footprints or {"chunk_id": [], "geometry": []}, crs=exp.crs)
        foot.to_file(tmp, layer=FOOTPRINTS, driver="GPKG", mode="a", geometry_type="MultiPolygon")
    written = sum(out.rows.values())
    log.info("vectorize: %d polygon(s), %.6f km² -> %s", written, area_m2 / 1e6, paths.polygons)
    if not index.classes:
        update_run_log(paths, total_rts_area_km2=round(float(area_m2) / 1e6, 6))
    return {"polygons": written}


def polygons_made_from(exp: Experiment) -> Callable[[str], str]:
    """Chunk id -> digest of what its pieces are made from: every probability store (a chunk
    core reads its neighbours' overhang), the threshold, the regions and the vectorize
    settings."""
    settings = exp.to_dict()
    made = digest(
        done_runs(RunPaths.of(exp), "predict"),
        threshold_identity(exp),
        settings["regions"],
        settings["vectorize"],
    )
    return lambda unit: made


STAGE = Stage(
    name="vectorize",
    units=vectorize_units,
    expected=lambda exp, unit: [CHUNK_PIECES.format(unit)],
    worker=VectorizeWorker,
    finish=gather,
    check=check_predicted,
    made_from=polygons_made_from,
)


def vectorize(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Trace every chunk and gather the polygons (see ``run.driver.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from ..config import Experiment
from ..core.progress import progress
from ..geo.grid import TileGrid
from ..model.threshold import merge_threshold, threshold_identity
from ..run.driver import run
from ..run.manifest import digest, done_runs
from ..run.runlog import update_run_log
from ..run.stage import Stage, UnitResult
from ..storage.paths import RunPaths, atomic_path
from .assembly import DEFAULT_REGION, StoreIndex, check_predicted, regions
from .hot_blocks import assemble_hot
from .pieces import chunk_footprint, chunk_pieces, tile_ids

log = logging.getLogger(__name__)
LAYER, FOOTPRINTS = "rts_predictions", "footprints"
COLUMNS = {
    "rts_id": "str",
    "region": "str",
    "area_m2": "float64",
    "perimeter_m": "float64",
    "centroid_lat": "float64",
    "centroid_lon": "float64",
    "mean_prob": "float64",
    "max_prob": "float64",
    "detection_scale": "str",
    "tile_ids": "str",
}


def vectorize_units(exp: Experiment) -> list[str]:
    """Chunks whose core holds a predicted pixel (of any store) inside a region."""
    grid = TileGrid.from_experiment(exp)
    index = StoreIndex.of_run(RunPaths.of(exp))
    index.require_binary("vectorize")
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

    def run(self, unit: str) -> UnitResult:
        core = self.grid.chunk_core(*TileGrid.parse_chunk_id(unit))
        core_map = assemble_hot(self.grid, self.index, core, self.threshold)
        footprint = chunk_footprint(core_map.valid, core, self.grid)
        if footprint is None:
            return UnitResult([], {"pieces": 0})
        frame = chunk_pieces(core_map, self.grid, self.threshold, self.exp.crs)
        frame["kind"] = "piece"
        # typed values in the footprint row too, so no column is written as text or float
        values = {c: pd.Series([0], dtype=t) for c, t in PIECE_TYPES.items()}
        foot = gpd.GeoDataFrame(
            {**values, "kind": ["footprint"]}, geometry=[footprint], crs=self.exp.crs
        )
        target = self.paths.pieces / f"{unit}.fgb"
        with atomic_path(target) as tmp:
            pd.concat([frame, foot], ignore_index=True).to_file(  # layer: not the temp name
                tmp, layer=unit, driver="FlatGeobuf", geometry_type="MultiPolygon"
            )
        return UnitResult([target], {"pieces": len(frame), "open_pieces": int(frame.open.sum())})


PIECE_TYPES = {
    "n_px": "int64",
    "sum_prob": "float64",
    "max_prob": "float64",
    "scale_bits": "int64",
    "first_row": "int64",
    "first_col": "int64",
    "open": "bool",
}


def read_pieces(path: Path) -> tuple[gpd.GeoDataFrame, shapely.Geometry]:
    """A chunk's pieces (Polygon geometries) and its footprint, from its pieces file."""
    frame = gpd.read_file(path)
    is_piece = (frame["kind"] == "piece").to_numpy()
    footprint = frame.geometry.values[~is_piece][0]
    pieces = frame[is_piece].drop(columns="kind").astype(PIECE_TYPES)
    pieces = pieces.set_geometry(shapely.get_geometry(pieces.geometry.values, 0), crs=frame.crs)
    return pieces.reset_index(drop=True), footprint


def join_open(pieces: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Join the open pieces that share an edge segment, summing their sums (union-find)."""
    geoms = pieces.geometry.values
    left, right = shapely.STRtree(geoms).query(geoms, predicate="touches")
    left, right = left[left < right], right[left < right]
    shared = shapely.intersection(shapely.boundary(geoms[left]), shapely.boundary(geoms[right]))
    edge = shapely.length(shared) > 0  # a shared corner point does not connect (4-connected)
    parent = np.arange(len(geoms))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left[edge], right[edge], strict=True):
        parent[root(a)] = root(b)
    groups = pieces.assign(group=[root(i) for i in range(len(geoms))])
    by_first = groups.sort_values(["first_row", "first_col"]).groupby("group")
    sums = groups.groupby("group").agg(
        n_px=("n_px", "sum"),
        sum_prob=("sum_prob", "sum"),
        max_prob=("max_prob", "max"),
        scale_bits=("scale_bits", lambda b: int(np.bitwise_or.reduce(b.to_numpy()))),
    )
    sums[["first_row", "first_col"]] = by_first[["first_row", "first_col"]].first()
    order = np.argsort(groups.group.to_numpy(), kind="stable")  # one sort, not a scan a group
    ends = np.searchsorted(groups.group.to_numpy()[order], sums.index.to_numpy(), side="right")
    unions = [shapely.union_all(part) for part in np.split(geoms[order], ends[:-1])]
    return gpd.GeoDataFrame(sums.reset_index(drop=True), geometry=unions, crs=pieces.crs)


def assign_regions(geoms: np.ndarray, boxes: dict[str, shapely.Geometry]) -> np.ndarray:
    """Per polygon, the region it overlaps most (name order breaks ties); "" for none."""
    if list(boxes) == [DEFAULT_REGION]:
        return np.full(len(geoms), DEFAULT_REGION, dtype=object)
    areas = np.zeros((len(boxes), len(geoms)))
    for i, box in enumerate(boxes.values()):
        hit = shapely.intersects(geoms, box)
        areas[i, hit] = shapely.area(shapely.intersection(geoms[hit], box))
    names = np.array(list(boxes) + [""], dtype=object)
    best = np.where(areas.max(axis=0) > 0, areas.argmax(axis=0), len(boxes))
    return names[best]


def finalize(
    parts: gpd.GeoDataFrame, exp: Experiment, boxes: dict[str, shapely.Geometry], scales
) -> gpd.GeoDataFrame:
    """Objects with their sums -> the output attributes, in regions, filtered, simplified."""
    # drop vertices that lie exactly on a straight edge (left where cut pieces were joined), so
    # the geometry does not depend on the chunking; no area changes
    geoms = shapely.simplify(parts.geometry.values, 0.0, preserve_topology=True)
    region = assign_regions(geoms, boxes)
    keep = (region != "") & (shapely.area(geoms) >= exp.vectorize.min_area_m2)
    parts, geoms, region = parts[keep], geoms[keep], region[keep]
    centroids = shapely.centroid(geoms)
    to_wgs84 = Transformer.from_crs(exp.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    bits = parts["scale_bits"].to_numpy().astype(np.int64)
    table = {
        "rts_id": [
            f"rts_{c:07d}_{r:07d}" for c, r in zip(parts.first_col, parts.first_row, strict=True)
        ],
        "region": region,
        "area_m2": shapely.area(geoms),
        "perimeter_m": shapely.length(geoms),
        "centroid_lat": lat,
        "centroid_lon": lon,
        "mean_prob": parts["sum_prob"].to_numpy() / parts["n_px"].to_numpy(),
        "max_prob": parts["max_prob"].to_numpy(),
        "detection_scale": [
            ",".join(str(float(s)) for i, s in enumerate(scales) if b >> i & 1) for b in bits
        ],
        "tile_ids": tile_ids(geoms, TileGrid.from_experiment(exp)),
    }
    if exp.vectorize.simplify_m > 0:  # after the measurements, keeping holes and validity
        geoms = shapely.simplify(geoms, exp.vectorize.simplify_m, preserve_topology=True)
    frame = gpd.GeoDataFrame(pd.DataFrame(table).astype(COLUMNS), geometry=geoms, crs=exp.crs)
    return frame.sort_values("rts_id").reset_index(drop=True)


def _region_geoms(
    exp: Experiment, grid: TileGrid, index: StoreIndex
) -> dict[str, shapely.Geometry]:
    return {n: shapely.box(*grid.bounds(b)) for n, b in regions(exp, grid, index).items()}


def gather(exp: Experiment, redo: bool) -> dict[str, int]:
    """Stream every chunk's closed pieces, then the joined open ones, into the GeoPackage."""
    paths = RunPaths.of(exp)
    if paths.polygons.exists() and not redo:
        return {}
    grid, index = TileGrid.from_experiment(exp), StoreIndex.of_run(paths)
    boxes, scales = _region_geoms(exp, grid, index), index.scales
    units = set(vectorize_units(exp))  # pieces of chunks no longer in a region are stale
    files = [f for f in paths.finished(paths.pieces, ".fgb") if f.stem in units]
    written, area_m2, open_parts, footprints = 0, 0.0, [], []
    with atomic_path(paths.polygons) as tmp:
        for path in progress(files, len(files), "vectorize: gathering chunks", log):
            pieces, footprint = read_pieces(paths.local(path))
            footprints.append({"chunk_id": path.stem, "geometry": footprint})
            open_parts.append(pieces[pieces["open"]])
            closed = finalize(pieces[~pieces["open"]], exp, boxes, scales)
            written += _append(tmp, closed, written)
            area_m2 += closed.area_m2.sum()
        open_pieces = pd.concat([_empty_pieces(exp), *open_parts], ignore_index=True)
        if len(open_pieces):
            joined = join_open(gpd.GeoDataFrame(open_pieces, crs=exp.crs))
            objects = finalize(joined, exp, boxes, scales)
            written += _append(tmp, objects, written)
            area_m2 += objects.area_m2.sum()
        if not written:
            _append(tmp, finalize(_empty_pieces(exp), exp, boxes, scales), 0, force=True)
        foot = gpd.GeoDataFrame(footprints or {"chunk_id": [], "geometry": []}, crs=exp.crs)
        foot.to_file(tmp, layer=FOOTPRINTS, driver="GPKG", mode="a", geometry_type="MultiPolygon")
    log.info("vectorize: %d polygon(s), %.6f km² -> %s", written, area_m2 / 1e6, paths.polygons)
    update_run_log(paths, total_rts_area_km2=round(float(area_m2) / 1e6, 6))
    return {"polygons": written}


def _empty_pieces(exp: Experiment) -> gpd.GeoDataFrame:
    columns = {c: pd.Series(dtype=t) for c, t in PIECE_TYPES.items()}
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=exp.crs), crs=exp.crs)


def _append(target: Path, frame: gpd.GeoDataFrame, so_far: int, force: bool = False) -> int:
    """Add ``frame`` to the output layer (creating it first); returns the rows added."""
    if len(frame) or force:
        mode = "a" if so_far else "w"
        frame.to_file(target, layer=LAYER, driver="GPKG", mode=mode, geometry_type="Polygon")
    return len(frame)


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
    expected=lambda exp, unit: [RunPaths.of(exp).pieces / f"{unit}.fgb"],
    worker=VectorizeWorker,
    finish=gather,
    check=check_predicted,
    made_from=polygons_made_from,
)


def vectorize(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Trace every chunk and gather the polygons (see ``run.driver.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

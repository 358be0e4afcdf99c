"""Stage ``vectorize``: the binary map of each region -> polygons in one GeoPackage.

Polygons are the 4-connected groups of pixels at or above the threshold, traced on pixel
edges (exact areas: a multiple of the pixel area). Attributes are measured in ``crs`` units
(EPSG:3413 metres by default), never in degrees, before any simplification:
``rts_id`` (stable: ``rts_{col}_{row}``, the grid pixel where the polygon starts in raster
order, so reruns and other chunkings give the same ids), ``area_m2``, ``perimeter_m`` (holes
included), ``centroid_lat``/``centroid_lon`` (WGS84), ``mean_prob``/``max_prob`` (over the
polygon's pixels), ``detection_scale`` (the scales that reached the threshold on it, e.g.
``1.0,0.5``), ``tile_ids`` (the grid tiles whose pixels it covers) and ``region``.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import Transformer
from rasterio import features
from shapely.geometry import box as shapely_box
from shapely.geometry import shape

from .config import Experiment
from .errors import DeepSegError
from .grid import PixelBox, TileGrid
from .mosaic import BINARY_NODATA, StoreIndex, assemble, regions
from .outputs import RunPaths, atomic_path
from .runlog import record_stage

log = logging.getLogger(__name__)
LAYER = "rts_predictions"
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


def _label(binary: np.ndarray, transform) -> tuple[list, np.ndarray]:
    """Polygons of the 1-pixels and a label image (0 = none, i + 1 = polygon i)."""
    geoms = [
        shape(g)
        for g, v in features.shapes(binary, mask=binary == 1, transform=transform)
        if v == 1
    ]
    labels = np.zeros(binary.shape, dtype=np.int32)
    if geoms:
        features.rasterize(
            ((g, i + 1) for i, g in enumerate(geoms)), out=labels, transform=transform
        )
    return geoms, labels


def _scale_names(hits_by_label: np.ndarray, scales: tuple[float, ...]) -> list[str]:
    return [
        ",".join(f"{s:g}" if s != 1 else "1.0" for i, s in enumerate(scales) if bits >> i & 1)
        for bits in hits_by_label
    ]


def _tile_ids(geom, grid: TileGrid, box: PixelBox) -> str:
    """Ids of the grid tiles whose area the polygon overlaps (touching an edge does not count)."""
    minx, miny, maxx, maxy = geom.bounds
    cols, rows = grid.tiles_touching(grid.box_of_bounds((minx, miny, maxx, maxy)))
    ids = []
    for row in rows:
        for col in cols:
            tile = shapely_box(*grid.bounds(grid.tile_box(col, row)))
            if geom.intersects(tile) and not geom.touches(tile):
                ids.append(grid.tile_id(col, row))
    return ",".join(ids)


def region_polygons(
    exp: Experiment, grid: TileGrid, index: StoreIndex, name: str, box: PixelBox, paths: RunPaths
) -> gpd.GeoDataFrame:
    """Measure the polygons of one region's binary map (read whole: one region at a time)."""
    with rasterio.open(paths.region_binary(name)) as src:
        binary, transform = src.read(1), src.transform
    with rasterio.open(paths.region_prob(name)) as src:
        prob = src.read(1)
    binary[binary == BINARY_NODATA] = 0
    geoms, labels = _label(binary, transform)
    n = len(geoms)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    mean = np.bincount(flat, weights=prob.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1)
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, flat, prob.ravel())
    _, hits = assemble(grid, index, box)
    bits = np.zeros(n + 1, dtype=np.int64)
    for i in range(len(index.scales)):
        bits |= (np.bincount(flat, weights=(hits.ravel() >> i) & 1, minlength=n + 1) > 0) << i
    ids, first = np.unique(flat, return_index=True)  # first pixel of each label, raster order
    rows, cols = np.divmod(first[ids > 0], box.width)
    shapes = np.empty(n, dtype=object)
    shapes[:] = geoms
    centroids = shapely.centroid(shapes)
    to_wgs84 = Transformer.from_crs(exp.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    table = {
        "rts_id": [
            f"rts_{box.col0 + c:07d}_{box.row0 + r:07d}" for r, c in zip(rows, cols, strict=True)
        ],
        "region": [name] * n,
        "area_m2": shapely.area(shapes),
        "perimeter_m": shapely.length(shapes),
        "centroid_lat": lat,
        "centroid_lon": lon,
        "mean_prob": mean,
        "max_prob": peak[1:],
        "detection_scale": _scale_names(bits[1:], index.scales),
        "tile_ids": [_tile_ids(g, grid, box) for g in geoms],
    }
    return gpd.GeoDataFrame(pd.DataFrame(table).astype(COLUMNS), geometry=geoms, crs=exp.crs)


def _finish(frame: gpd.GeoDataFrame, exp: Experiment) -> gpd.GeoDataFrame:
    """Drop specks under ``min_area_m2``, then simplify (after measuring), sorted by id."""
    frame = frame[frame["area_m2"] >= exp.vectorize.min_area_m2]
    if exp.vectorize.simplify_m > 0:
        frame = frame.set_geometry(
            frame.geometry.simplify(exp.vectorize.simplify_m, preserve_topology=True)
        )
    return frame.sort_values(["region", "rts_id"]).reset_index(drop=True)


def vectorize(exp: Experiment, force: bool = False) -> dict[str, int]:
    """Write ``vectors/rts_predictions.gpkg`` (layer ``rts_predictions``) for every region."""
    grid = TileGrid.from_experiment(exp)
    paths = RunPaths.of(exp)
    if not force and paths.done(paths.polygons):
        log.info("vectorize: %s exists; skipped (use --force to redo)", paths.polygons)
        return {"polygons": -1}
    index = StoreIndex.scan(paths.local_folder(paths.predictions, ".kea"))
    paths.local_folder(paths.merged, ".tif")
    counts = {"polygons": 0}
    with record_stage(paths, "vectorize", counts):
        frames = []
        for name, box in regions(exp, grid, index).items():
            if not paths.region_binary(name).exists():
                raise DeepSegError(f"{paths.region_binary(name)}: missing; run merge.py first")
            frames.append(region_polygons(exp, grid, index, name, box, paths))
        frame = _finish(pd.concat(frames, ignore_index=True), exp)
        frame = gpd.GeoDataFrame(frame, geometry="geometry", crs=exp.crs)
        with atomic_path(paths.polygons) as tmp:
            frame.to_file(tmp, layer=LAYER, driver="GPKG", geometry_type="Polygon")
        counts["polygons"] = len(frame)
    log.info("vectorize: %d polygon(s) -> %s", len(frame), paths.polygons)
    return counts

"""Polygon pieces of one chunk core, and the sums their polygons' attributes are made of.

A piece is a 4-connected group of core pixels at or above the threshold, traced on pixel
edges. Pieces are traced in *global grid pixel* coordinates (integers, exact) and turned into
map coordinates (``crs`` units) by one formula, ``x = origin_x + col * res``,
``y = origin_y - row * res``, so a pixel corner shared by two chunks gets bit-identical
coordinates in both and pieces cut by a core edge join without slivers. A piece touching its
core's edge is *open* (it may continue next door); ``vectorize`` joins open pieces.

Per piece: ``n_px`` (pixels), ``sum_prob``/``max_prob`` (fused probability over them),
``scale_bits`` (OR of the scale-hit bits), ``first_row``/``first_col`` (its first pixel in
raster order, global grid pixels). The chunk's ``footprint`` is its core's valid pixels.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import shape

from ..geo.grid import PixelBox, TileGrid
from ..stores.layout import PROB_NODATA


def to_map(geoms: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Geometries in global grid pixels -> map coordinates in ``crs`` (one formula for all)."""
    res, ox, oy = grid.resolution, grid.origin_x, grid.origin_y
    return shapely.transform(
        geoms, lambda xy: np.column_stack([ox + xy[:, 0] * res, oy - xy[:, 1] * res])
    )


def _trace(mask: np.ndarray, core: PixelBox) -> list:
    """Polygons of the True pixels of ``mask`` (covering ``core``), in global grid pixels."""
    shift = Affine.translation(core.col0, core.row0)
    return [
        shape(g)
        for g, v in features.shapes(mask.view(np.uint8), mask=mask, connectivity=4, transform=shift)
        if v == 1
    ]


def _labels(geoms: list, core: PixelBox) -> np.ndarray:
    """Label image of ``core``: 0 off, i + 1 inside piece i (pixel centres, holes excluded)."""
    labels = np.zeros((core.height, core.width), dtype=np.int32)
    if geoms:
        shift = Affine.translation(core.col0, core.row0)
        features.rasterize(((g, i + 1) for i, g in enumerate(geoms)), out=labels, transform=shift)
    return labels


def _sums(labels: np.ndarray, on: np.ndarray, prob: np.ndarray, hits: np.ndarray, n: int) -> dict:
    """Per-piece pixel count, probability sum and maximum, scale bits and first pixel."""
    flat = np.flatnonzero(on)  # raster order
    lab = labels.ravel()[flat] - 1
    p = prob.ravel()[flat].astype(np.float64)
    order = np.argsort(lab, kind="stable")  # grouped by piece, raster order within each
    starts = np.searchsorted(lab[order], np.arange(n))
    first = flat[order][starts]
    bits = np.zeros(n, dtype=np.int64)
    np.bitwise_or.at(bits, lab, hits.ravel()[flat].astype(np.int64))
    return {
        "n_px": np.bincount(lab, minlength=n),
        "sum_prob": np.bincount(lab, weights=p, minlength=n),
        "max_prob": np.maximum.reduceat(p[order], starts) if n else np.zeros(0),
        "scale_bits": bits,
        "first_row": first // labels.shape[1],
        "first_col": first % labels.shape[1],
    }


def chunk_pieces(
    prob: np.ndarray, hits: np.ndarray, core: PixelBox, grid: TileGrid, threshold: float, crs: str
) -> gpd.GeoDataFrame:
    """The pieces of one core (``prob``/``hits`` cover ``core``; nodata -1), map coordinates."""
    on = (prob >= threshold) & (prob != PROB_NODATA)
    geoms = _trace(on, core)
    n = len(geoms)
    sums = _sums(_labels(geoms, core), on, prob, hits, n)
    sums["first_row"] = sums["first_row"] + core.row0
    sums["first_col"] = sums["first_col"] + core.col0
    bounds = shapely.bounds(np.array(geoms, dtype=object)) if n else np.zeros((0, 4))
    sums["open"] = (
        (bounds[:, 0] <= core.col0)
        | (bounds[:, 1] <= core.row0)
        | (bounds[:, 2] >= core.col1)
        | (bounds[:, 3] >= core.row1)
    )
    return gpd.GeoDataFrame(sums, geometry=to_map(np.array(geoms, dtype=object), grid), crs=crs)


def chunk_footprint(prob: np.ndarray, core: PixelBox, grid: TileGrid) -> shapely.Geometry | None:
    """The core's valid (predicted) pixels as one (multi)polygon in map coordinates, or None."""
    valid = prob != PROB_NODATA
    if not valid.any():
        return None
    if valid.all():
        return to_map(np.array([shapely.box(core.col0, core.row0, core.col1, core.row1)]), grid)[0]
    return to_map(np.array([shapely.union_all(_trace(valid, core))]), grid)[0]


def tile_ids(geoms: np.ndarray, grid: TileGrid) -> list[str]:
    """Per polygon (map coordinates), the ids of the grid tiles whose area it overlaps (a shared
    edge is not), comma-separated: every (polygon, candidate tile) pair is tested at once."""
    if len(geoms) == 0:
        return []
    res, s, t, eps = grid.resolution, grid.stride, grid.tile_size, 1e-6
    ox, oy = grid.origin_x, grid.origin_y
    b = shapely.bounds(geoms).reshape(-1, 4)
    first = np.floor(np.column_stack([b[:, 0] - ox, oy - b[:, 3]]) / res + eps).astype(np.int64)
    last = np.ceil(np.column_stack([b[:, 2] - ox, oy - b[:, 1]]) / res - eps).astype(np.int64)
    lo = np.maximum(0, -((t - first - 1) // s))  # as grid.tiles_touching(box_of_bounds(...))
    count = np.maximum(0, (last - 1) // s + 1 - lo)  # tiles across, down
    per = count[:, 0] * count[:, 1]
    g = np.repeat(np.arange(len(geoms)), per)  # rows outer, columns inner, as tiles_touching
    k = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    cols, rows = lo[g, 0] + k % count[g, 0], lo[g, 1] + k // count[g, 0]
    x0, x1 = ox + (cols * s) * res, ox + (cols * s + t) * res  # as grid.bounds(tile_box(...))
    y0, y1 = oy - (rows * s + t) * res, oy - (rows * s) * res
    boxes = shapely.box(x0, y0, x1, y1)
    hit = shapely.intersects(geoms[g], boxes) & ~shapely.touches(geoms[g], boxes)
    pairs = zip(cols[hit].tolist(), rows[hit].tolist(), strict=True)
    ids = np.array([grid.tile_id(c, r) for c, r in pairs], dtype=object)
    cuts = np.cumsum(np.bincount(g[hit], minlength=len(geoms)))[:-1]
    return [",".join(part) for part in np.split(ids, cuts)]

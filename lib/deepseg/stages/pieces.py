"""Polygon pieces of one chunk core, and the sums their polygons' attributes are made of.

A piece is a 4-connected group of core pixels at or above the threshold, traced on pixel
edges. Pieces are traced in *global grid pixel* coordinates (integers, exact) and turned into
map coordinates (``crs`` units) by one formula, ``x = origin_x + col * res``,
``y = origin_y - row * res``, so a pixel corner shared by two chunks gets bit-identical
coordinates in both and pieces cut by a core edge join without slivers. A piece touching its
core's edge is *open* (it may continue next door); ``vectorize`` joins open pieces. Each
group of hot blocks (``hot_blocks``) is traced on the box of its on pixels, so tracing costs
what the detections cost; pieces are listed in the order of their first pixels, which makes
the list independent of how the core was traced.

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
from .hot_blocks import CoreMap, block_components

SUM_KEYS = ("n_px", "sum_prob", "max_prob", "scale_bits", "first_row", "first_col")


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


def chunk_pieces(core_map: CoreMap, grid: TileGrid, threshold: float, crs: str) -> gpd.GeoDataFrame:
    """The pieces of one core (``core_map`` covers it), map coordinates, in the order of their
    first pixels. Each group of hot blocks is traced on its own box (see ``hot_blocks``)."""
    m, core = core_map, core_map.window
    on = (m.prob >= threshold) & (m.prob != PROB_NODATA)
    geoms, sums = [], []
    for rows, cols, group in block_components(m.hot):
        b = m.block
        box = PixelBox(
            core.col0 + cols.start * b,
            core.row0 + rows.start * b,
            min(core.col1, core.col0 + cols.stop * b),
            min(core.row1, core.row0 + rows.stop * b),
        )
        here = on[box.slices_in(core)]
        here = here & np.repeat(np.repeat(group, b, 0), b, 1)[: box.height, : box.width]
        box, here = _crop(box, here)  # tracing costs the pixels it scans
        if box is None:
            continue
        traced, at = _trace(here, box), box.slices_in(core)
        labels = here.view(np.uint8) if len(traced) == 1 else _labels(traced, box)
        part = _sums(labels, here, m.prob[at], m.hits[at], len(traced))
        part["first_row"] += box.row0
        part["first_col"] += box.col0
        geoms += traced
        sums.append(part)
    table = {k: np.concatenate([p[k] for p in sums]) for k in sums[0]} if sums else _no_sums()
    order = np.lexsort((table["first_col"], table["first_row"]))
    table = {k: v[order] for k, v in table.items()}
    geoms = np.array(geoms, dtype=object)[order] if geoms else np.zeros(0, dtype=object)
    bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    table["open"] = (
        (bounds[:, 0] <= core.col0)
        | (bounds[:, 1] <= core.row0)
        | (bounds[:, 2] >= core.col1)
        | (bounds[:, 3] >= core.row1)
    )
    return gpd.GeoDataFrame(table, geometry=to_map(geoms, grid), crs=crs)


def _crop(box: PixelBox, mask: np.ndarray) -> tuple[PixelBox | None, np.ndarray]:
    """The smallest box (and ``mask`` over it) holding ``mask``'s True pixels; None if none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None, mask
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    inner = PixelBox(box.col0 + c0, box.row0 + r0, box.col0 + c1, box.row0 + r1)
    return inner, mask[r0:r1, c0:c1]


def _no_sums() -> dict:
    ints = ("n_px", "scale_bits", "first_row", "first_col")
    return {k: np.zeros(0, np.int64 if k in ints else np.float64) for k in SUM_KEYS}


def chunk_footprint(valid: np.ndarray, core: PixelBox, grid: TileGrid) -> shapely.Geometry | None:
    """The core's valid (predicted) pixels as one (multi)polygon in map coordinates, or None."""
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

"""``pieces.tile_ids``: every polygon's tiles, found for all polygons at once, are the tiles a
one-by-one shapely test finds (area shared; an edge or corner alone is not)."""

from __future__ import annotations

import numpy as np
import shapely

from deepseg.geo.grid import TileGrid
from deepseg.stages.pieces import tile_ids

GRID = TileGrid(origin_x=-4000100.0, origin_y=4100100.0, resolution=3.0, tile_size=512,
                stride=256, chunk_tiles=16, halo_px=0)  # fmt: skip


def one_by_one(geom: shapely.Geometry) -> str:
    x0, y0, x1, y1 = geom.bounds
    c0 = int((x0 - GRID.origin_x) // (GRID.stride * 3.0)) - 2
    r0 = int((GRID.origin_y - y1) // (GRID.stride * 3.0)) - 2
    found = []
    for r in range(max(0, r0), r0 + 8):
        for c in range(max(0, c0), c0 + 8):
            box = shapely.box(*GRID.bounds(GRID.tile_box(c, r)))
            if geom.intersects(box) and not geom.touches(box):
                found.append(GRID.tile_id(c, r))
    return ",".join(found)


def test_all_at_once_equals_one_by_one():
    rng = np.random.default_rng(8)
    px = 3.0 * 256  # one stride in metres
    x = GRID.origin_x + px * rng.integers(2, 40, 300) + rng.choice([0, 0.5, 1.5, 128.0], 300) * 3
    y = GRID.origin_y - px * rng.integers(2, 40, 300) - rng.choice([0, 0.5, 7.0], 300) * 3
    w, h = 3.0 * rng.choice([1, 2, 256, 300, 512], 300), 3.0 * rng.choice([1, 3, 256, 700], 300)
    geoms = shapely.box(x, y - h, x + w, y)  # edges on tile lines, inside tiles, across several
    geoms[:20] = shapely.buffer(geoms[:20], 5.0)  # and some round ones
    corner = GRID.bounds(GRID.tile_box(10, 10))  # touching tile (10, 10) at a corner only
    geoms[20] = shapely.box(corner[2], corner[3], corner[2] + 30, corner[3] + 30)
    ox, oy = GRID.origin_x, GRID.origin_y  # pixels 10..100 from the origin: tile (0, 0) alone
    geoms[21] = shapely.box(ox + 30, oy - 300, ox + 300, oy - 30)
    got = tile_ids(geoms, GRID)
    assert got == [one_by_one(g) for g in geoms]
    assert "c000010_r000010" not in got[20] and got[21] == "c000000_r000000"
    assert {ids.count(",") + 1 for ids in got} >= {1, 4, 6}  # one tile, an inner pixel's four, more
    assert tile_ids(np.array([], dtype=object), GRID) == []

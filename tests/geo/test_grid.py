"""The global grid: ids, ownership of tiles by chunks, halos and lattice snapping."""

from __future__ import annotations

import itertools

import pytest

from deepseg.geo.grid import PixelBox, TileGrid, scale_context_px


def grid(tile=512, stride=256, chunk_tiles=16, halo=0) -> TileGrid:
    return TileGrid(-4000100.0, 4100100.0, 3.0, tile, stride, chunk_tiles, halo)


def test_ids_round_trip():
    g = grid()
    assert g.tile_id(12345, 6789) == "c012345_r006789"
    assert g.parse_tile_id("c012345_r006789") == (12345, 6789)
    assert g.chunk_id(12, 34) == "c00012_r00034"
    with pytest.raises(ValueError):
        g.parse_tile_id("012345_6789")


@pytest.mark.parametrize("tile,stride,k", [(512, 256, 16), (64, 32, 1), (64, 16, 1), (48, 16, 4)])
def test_every_tile_belongs_to_exactly_one_chunk_footprint(tile, stride, k):
    g = grid(tile, stride, k)
    for col, row in itertools.product(range(0, 3 * k + 2), repeat=2):
        owner = g.chunk_of_tile(col, row)
        assert (col, row) in set(g.chunk_tiles_in(*owner))
        footprint = g.chunk_footprint(*owner)
        assert g.tile_box(col, row).intersection(footprint) == g.tile_box(col, row)


@pytest.mark.parametrize("tile,stride", [(64, 32), (64, 16), (48, 16), (64, 64)])
def test_tiles_touching_is_exact(tile, stride):
    g = grid(tile, stride, 2)
    box = PixelBox(100, 37, 171, 90)
    cols, rows = g.tiles_touching(box)
    for col, row in itertools.product(range(0, 20), range(0, 20)):
        touches = g.tile_box(col, row).intersection(box) is not None
        assert touches == (col in cols and row in rows)


def test_halo_follows_the_widest_scale():
    assert scale_context_px(512, 1.0) == (512, 0)
    assert scale_context_px(512, 0.5) == (1024, 256)
    assert scale_context_px(512, 0.25) == (2048, 768)
    assert scale_context_px(512, 0.3) == (1707, 597)  # odd context: 597 before, 598 after


def test_bounds_and_snapping():
    g = grid()
    box = PixelBox(10, 20, 30, 50)
    assert g.bounds(box) == (-4000070.0, 4099950.0, -4000010.0, 4100040.0)
    assert g.box_of_bounds(g.bounds(box)) == box
    assert g.box_of_bounds((-4000069.0, 4099951.0, -4000011.0, 4100039.0)) == box
    t = g.transform(box)
    assert (t.a, t.e, t.c, t.f) == (3.0, -3.0, -4000070.0, 4100040.0)

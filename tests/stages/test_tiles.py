"""create_tiles' choice of tiles: each tile's valid share, counted once per block."""

from __future__ import annotations

import numpy as np
import pytest

from deepseg.geo.grid import TileGrid
from deepseg.stages.tiles import chunk_tiles, valid_fractions


@pytest.mark.parametrize(
    ("tile", "stride", "n", "halo"),
    [(64, 32, 4, 0), (64, 32, 3, 7), (32, 32, 4, 5), (48, 32, 3, 2), (96, 32, 2, 0)],
)
def test_valid_fractions_equal_each_tile_read_on_its_own(tile, stride, n, halo):
    grid = TileGrid(0.0, 0.0, 3.0, tile, stride, n, halo)
    chunk = (2, 1)
    box = grid.chunk_store_box(*chunk)
    rng = np.random.default_rng(tile + halo)
    valid = rng.random((box.height, box.width)) < 0.7
    valid[: halo + tile, : halo + tile] = False  # the first tile without data
    got = valid_fractions(grid, chunk, box, valid)
    first_col, first_row = chunk[0] * n, chunk[1] * n
    for col, row in grid.chunk_tiles_in(*chunk):
        want = valid[grid.tile_box(col, row).slices_in(box)].mean()
        assert got[row - first_row, col - first_col] == want, (col, row)
    assert (got == 0).any() and (got > 0).any()
    table, no_data = chunk_tiles(grid, chunk, box, valid, None, [box])
    assert len(table.tile_id) + no_data == n**2 and no_data == int((got == 0).sum())
    assert np.array_equal(table.valid_fraction, got[got > 0].astype(np.float32))

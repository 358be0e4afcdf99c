"""Vectorize reads only hot blocks: the same on pixels, values and pieces as reading it all."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely

from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.stages.assembly import StoreIndex, assemble
from deepseg.stages.hot_blocks import assemble_hot, block_components
from deepseg.stages.pieces import chunk_pieces
from deepseg.stores.layout import PROB_BLOCK_PX, StorePlace
from deepseg.stores.prob_store import ProbStore, block_summary, write_prob_store

# production-like alignment: 768 px cores (3 blocks of 256), 1024 px footprints (4 blocks)
GRID = TileGrid(0.0, 0.0, 3.0, 512, 256, 3, 0)
CHUNKS = [(c, r) for r in range(7, 10) for c in range(5, 8)]
AREA = PixelBox(5 * 768, 7 * 768, 8 * 768 + 256, 10 * 768 + 256)  # every footprint


def base_map(rng: np.random.Generator) -> np.ndarray:
    """Noise below 0.4; objects up to 0.95 across block and chunk borders (discs, a ring, a
    snake through many blocks); a nodata disc and a nodata strip cutting blocks."""
    rows, cols = np.mgrid[AREA.row0 : AREA.row1, AREA.col0 : AREA.col1]
    prob = rng.uniform(0.0, 0.32, (AREA.height, AREA.width))
    for col, row, radius in [(4600, 6140, 40), (4352, 5600, 25), (5000, 6900, 60), (5740, 5800, 9)]:
        d = np.hypot(cols - col, rows - row)
        prob = np.maximum(prob, np.where(d < radius, 0.95 - 0.4 * d / radius, 0))
    ring = np.hypot(cols - 5400, rows - 6300)
    prob[(ring > 20) & (ring < 70)] = 0.8
    snake = (np.abs(rows - 5500 - 300 * np.sin((cols - 3840) / 150.0)) < 4) & (cols < 5200)
    prob[snake] = 0.9
    prob[np.hypot(cols - 4200, rows - 7300) < 180] = -1.0
    prob[:, (cols[0] >= 5900) & (cols[0] < 5950)] = -1.0
    return prob.astype(np.float32)


def write_stores(folder: Path, method: str, seed: int = 0) -> StoreIndex:
    """One store a chunk: the base map plus its own noise (stores disagree near 0.5)."""
    rng = np.random.default_rng(seed)
    base = base_map(rng)
    paths, boxes = {}, {}
    for chunk in CHUNKS:
        box = GRID.chunk_footprint(*chunk)
        prob = base[box.slices_in(AREA)].copy()
        valid = prob != -1
        prob[valid] = np.clip(prob[valid] + rng.uniform(-0.08, 0.08, valid.sum()), 0, 1)
        if chunk == (6, 8):  # a hole its neighbours cover
            prob[700:900, 100:180] = -1
        for seen_by, (col, row) in [((5, 8), (4736, 6528)), ((6, 8), (4736, 6800))]:
            if chunk == seen_by:  # an object only one of two overlapping stores sees
                d = np.hypot(
                    *np.mgrid[box.row0 : box.row1, box.col0 : box.col1] - [[[row]], [[col]]]
                )
                prob[d < 12] = 0.9
        hits = (prob >= 0.5).astype(np.uint8) | (rng.random(prob.shape) < 0.3).astype(np.uint8) * 2
        weight = np.where(prob != -1, rng.uniform(0.1, 1.0, prob.shape), 0).astype(np.float32)
        place = StorePlace.on_grid(GRID, "EPSG:3413", chunk, box)
        path = folder / f"{GRID.chunk_id(*chunk)}.kea"
        store = ProbStore(
            place, prob, hits, weight if method == "sinusoidal" else None, 0.5, (1.0,)
        )
        write_prob_store(path, store)
        paths[chunk], boxes[chunk] = path, box
    return StoreIndex(paths, boxes, 0.5, (1.0,), method)


@pytest.fixture(scope="module", params=["max", "sinusoidal"])
def index(request, tmp_path_factory) -> StoreIndex:
    return write_stores(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_hot_blocks_hold_every_on_pixel_with_its_exact_value(index, threshold):
    read_px = valid_px = 0
    for chunk in CHUNKS:
        core = GRID.chunk_core(*chunk)
        hot = assemble_hot(GRID, index, core, threshold)
        prob, hits = assemble(GRID, index, core)
        assert hot.block == PROB_BLOCK_PX and hot.hot.shape == (3, 3)
        on = (prob >= threshold) & (prob != -1)
        np.testing.assert_array_equal((hot.prob >= threshold) & (hot.prob != -1), on)
        np.testing.assert_array_equal(hot.prob[on], prob[on])
        np.testing.assert_array_equal(hot.hits[on], hits[on])
        np.testing.assert_array_equal(hot.valid, prob != -1)
        blocks = np.repeat(np.repeat(hot.hot, 256, 0), 256, 1)
        assert not (on & ~blocks).any()
        read_px += (hot.prob != -1).sum()
        valid_px += hot.valid.sum()
    assert read_px < 0.6 * valid_px  # most blocks were never read


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_pieces_from_hot_blocks_equal_pieces_from_the_whole_core(index, threshold):
    import deepseg.stages.hot_blocks as hot_blocks

    pieces = 0
    for chunk in CHUNKS:
        core = GRID.chunk_core(*chunk)
        fast = chunk_pieces(
            assemble_hot(GRID, index, core, threshold), GRID, threshold, "EPSG:3413"
        )
        whole = chunk_pieces(hot_blocks._whole(GRID, index, core), GRID, threshold, "EPSG:3413")
        assert len(fast) == len(whole)
        for column in whole.columns.drop("geometry"):
            np.testing.assert_array_equal(fast[column].to_numpy(), whole[column].to_numpy())
        assert all(shapely.equals_exact(fast.geometry.values, whole.geometry.values, 0))
        pieces += len(whole)
    assert pieces > 10


def test_stores_without_summaries_are_read_whole(tmp_path):
    index = write_stores(tmp_path, "max")
    with h5py.File(index.paths[(6, 8)], "a") as f:
        del f["DEEPSEG/block_max"], f["DEEPSEG/block_valid"]
    core = GRID.chunk_core(6, 8)
    hot = assemble_hot(GRID, index, core, 0.5)
    prob, _ = assemble(GRID, index, core)
    assert hot.hot.shape == (1, 1) and hot.hot.all()
    np.testing.assert_array_equal(hot.prob, prob)


def test_block_summary_is_max_and_valid_count_per_block():
    prob = np.full((600, 520), -1.0, np.float32)
    prob[10, 300] = 0.25
    prob[590:, :] = 0.5
    block_max, block_valid = block_summary(prob, 256)
    np.testing.assert_array_equal(block_max, [[-1, 0.25, -1], [-1, -1, -1], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(block_valid, [[0, 1, 0], [0, 0, 0], [2560, 2560, 80]])


def flood_fill(mask: np.ndarray) -> set[frozenset]:
    seen, groups = np.zeros_like(mask), set()
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        group, todo = set(), deque([start])
        seen[start] = True
        while todo:
            r, c = todo.popleft()
            group.add((int(r), int(c)))
            for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                inside = 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1]
                if inside and mask[n] and not seen[n]:
                    seen[n] = True
                    todo.append(n)
        groups.add(frozenset(group))
    return groups


@pytest.mark.parametrize("density", [0.2, 0.5, 0.7])
def test_block_components_are_the_4_connected_groups(density):
    mask = np.random.default_rng(int(density * 10)).random((17, 23)) < density
    mask[3, 1:22] = mask[3:14, 21] = mask[13, 2:22] = True  # a long snake
    got = set()
    for rows, cols, part in block_components(mask):
        cells = np.argwhere(part) + [rows.start, cols.start]
        got.add(frozenset((int(r), int(c)) for r, c in cells))
    assert got == flood_fill(mask)

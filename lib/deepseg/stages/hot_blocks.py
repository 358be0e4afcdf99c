"""A chunk core as vectorize needs it, read only where a polygon can be: its *hot* blocks.

Every probability store records, per ``PROB_BLOCK_PX`` block of its box, the highest
probability and how many pixels hold one (``stores.layout``). A block of the core is hot when
a store's block over it reaches the threshold: only there can a fused pixel be on, because the
fused value (the maximum, or a weighted mean of the stores' values) is never above the highest
of them. ``assemble_hot`` reads, per store, the blocks that are hot (every store over them, so
their fusion is exact) or only partly valid (for the footprint); a block all valid or all
nodata is known from the summary alone. Vectorize then reads and traces in proportion to the
detections, not the area. Stores written without summaries, or whose blocks do not line up
with the core's (a chunk side that is not a multiple of the block), are read whole, and the
core is then one hot block. Boxes are global grid pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geo.grid import PixelBox, TileGrid
from ..stores.layout import PROB_NODATA
from ..stores.prob_store import ProbSummary, read_prob_summary, read_prob_windows
from .assembly import Fusion, StoreIndex, assemble


@dataclass(frozen=True)
class CoreMap:
    """A window's fused values where they were read, its valid pixels and its hot blocks."""

    window: PixelBox
    prob: np.ndarray  # float32: fused where read; -1 elsewhere (nodata, or below the threshold)
    hits: np.ndarray  # uint8 scale bits where read, 0 elsewhere
    valid: np.ndarray  # bool: pixels holding a probability (read or known from the summary)
    hot: np.ndarray  # bool (ceil(rows / block), ceil(cols / block)): blocks that may be on
    block: int  # block side, px


def assemble_hot(grid: TileGrid, index: StoreIndex, window: PixelBox, threshold: float) -> CoreMap:
    """``window``'s stores read in its hot and partly valid blocks only (see the module)."""
    paths = index.paths_touching(grid, window)
    summaries = [read_prob_summary(p) for p in paths]
    if not paths or any(s is None for s in summaries) or len({s.block for s in summaries}) > 1:
        return _whole(grid, index, window)
    places = [_place(s, window) for s in summaries]
    if any(p is None for p in places):
        return _whole(grid, index, window)  # the stores' blocks are not on the window's
    block = summaries[0].block
    hot = np.zeros((-(-window.height // block), -(-window.width // block)), dtype=bool)
    for summary, (mine, theirs) in zip(summaries, places, strict=True):
        hot[theirs] |= summary.block_max[mine] >= threshold
    fusion = Fusion(window, index.merge_method)
    valid = np.zeros((window.height, window.width), dtype=bool)
    for path, summary, (mine, theirs) in zip(paths, summaries, places, strict=True):
        counts, area = summary.block_valid[mine], _block_area(summary)[mine]
        read = hot[theirs] | ((counts > 0) & (counts < area))
        for box in _boxes(~read & (counts == area), theirs, window, block, summary.box):
            valid[box.slices_in(window)] = True
        for part in read_prob_windows(path, _boxes(read, theirs, window, block, summary.box)):
            if part is not None:
                fusion.add(part)
                valid[part.box.slices_in(window)] |= part.prob != PROB_NODATA
    prob, hits = fusion.result()
    return CoreMap(window, prob, hits, valid, hot, block)


def _whole(grid: TileGrid, index: StoreIndex, window: PixelBox) -> CoreMap:
    prob, hits = assemble(grid, index, window)
    side = max(window.height, window.width)
    return CoreMap(window, prob, hits, prob != PROB_NODATA, np.ones((1, 1), bool), side)


Place = tuple[tuple[slice, slice], tuple[slice, slice]]  # (store blocks, window blocks)


def _place(summary: ProbSummary, window: PixelBox) -> Place | None:
    """Which of the store's blocks fall on which of the window's; None when they do not line
    up (the store's box is not a whole number of blocks from the window's corner)."""
    b, box = summary.block, summary.box
    if (box.row0 - window.row0) % b or (box.col0 - window.col0) % b:
        return None
    span = []
    for off, n_mine, n_window in (
        ((box.row0 - window.row0) // b, summary.block_max.shape[0], -(-window.height // b)),
        ((box.col0 - window.col0) // b, summary.block_max.shape[1], -(-window.width // b)),
    ):
        lo, hi = max(0, off), min(n_window, off + n_mine)
        span.append((slice(lo - off, max(lo, hi) - off), slice(lo, max(lo, hi))))
    return (span[0][0], span[1][0]), (span[0][1], span[1][1])


def _block_area(summary: ProbSummary) -> np.ndarray:
    """Pixels of each of the store's blocks inside its box (the last ones may be cut)."""
    b, (rows, cols) = summary.block, summary.block_max.shape
    heights = np.minimum(b, summary.box.height - b * np.arange(rows))
    widths = np.minimum(b, summary.box.width - b * np.arange(cols))
    return np.outer(heights, widths)


def _boxes(
    mask: np.ndarray, theirs: tuple[slice, slice], window: PixelBox, b: int, store: PixelBox
) -> list[PixelBox]:
    """Grid-pixel boxes of the runs of True blocks in each block row of ``mask`` (which covers
    the window's blocks ``theirs``), cut to the window and the store's box."""
    out = []
    bound = window.intersection(store)
    for i, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.view(np.int8), [0]])))
        r0 = window.row0 + (theirs[0].start + i) * b
        for c_lo, c_hi in zip(edges[::2], edges[1::2], strict=True):
            c0 = window.col0 + (theirs[1].start + int(c_lo)) * b
            box = PixelBox(c0, r0, c0 + int(c_hi - c_lo) * b, r0 + b).intersection(bound)
            if box is not None:
                out.append(box)
    return out


def block_components(hot: np.ndarray) -> list[tuple[slice, slice, np.ndarray]]:
    """The 4-connected groups of hot blocks: (row slice, column slice, mask in that box) each.
    A piece is 4-connected, so its pixels lie in one group."""
    none = hot.size
    label = np.where(hot, np.arange(hot.size).reshape(hot.shape), none)
    while True:  # each block takes its smallest neighbour's label until none changes
        new = label.copy()
        np.minimum(new[1:], label[:-1], out=new[1:])
        np.minimum(new[:-1], label[1:], out=new[:-1])
        np.minimum(new[:, 1:], label[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], label[:, 1:], out=new[:, :-1])
        new[~hot] = none
        if np.array_equal(new, label):
            break
        label = new
    groups = []
    for value in np.unique(label[hot]):
        rows, cols = np.nonzero(label == value)
        at = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        groups.append((*at, label[at] == value))
    return groups

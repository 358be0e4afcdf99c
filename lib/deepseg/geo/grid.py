"""The global tile grid: tile and chunk ids, their pixel boxes and map bounds.

Every position is in *global grid pixels*: column ``col = (x - origin_x) / resolution`` and
row ``row = (origin_y - y) / resolution`` in the experiment's ``crs`` (EPSG:3413 metres by
default). Pixel (col, row) covers x in [origin_x + col*res, origin_x + (col+1)*res) and
y in (origin_y - (row+1)*res, origin_y - row*res]. Because the grid is anchored at a fixed
origin, tile and chunk ids are global and stable between runs.

With tile size ``T`` and stride ``s`` (pixels), tile (c, r) covers columns [c*s, c*s + T) and
rows [r*s, r*s + T). Its *stride cell* is [c*s, (c+1)*s) x [r*s, (r+1)*s). A chunk of
``K = chunk_tiles`` holds the K x K tiles whose stride cells lie in its *core*
[C*K*s, (C+1)*K*s) (same for rows), so every tile belongs to exactly one chunk. A chunk's
*footprint* is its core plus the ``T - s`` overhang of its last tiles to the right and bottom;
its *store box* adds the context halo that multi-scale inference reads around each tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from affine import Affine

from ..config import Experiment

ID_DIGITS_TILE = 6
ID_DIGITS_CHUNK = 5


class PixelBox(NamedTuple):
    """Half-open box of global grid pixels: columns [col0, col1), rows [row0, row1)."""

    col0: int
    row0: int
    col1: int
    row1: int

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    def intersection(self, other: PixelBox) -> PixelBox | None:
        """The common part of two boxes, or None when they do not overlap."""
        box = PixelBox(
            max(self.col0, other.col0),
            max(self.row0, other.row0),
            min(self.col1, other.col1),
            min(self.row1, other.row1),
        )
        return box if box.col0 < box.col1 and box.row0 < box.row1 else None

    def union(self, other: PixelBox) -> PixelBox:
        """The smallest box holding both."""
        return PixelBox(
            min(self.col0, other.col0),
            min(self.row0, other.row0),
            max(self.col1, other.col1),
            max(self.row1, other.row1),
        )

    def slices_in(self, outer: PixelBox) -> tuple[slice, slice]:
        """(row slice, column slice) of this box inside an array that covers ``outer``."""
        return (
            slice(self.row0 - outer.row0, self.row1 - outer.row0),
            slice(self.col0 - outer.col0, self.col1 - outer.col0),
        )


def scale_context_px(tile_size: int, scale: float) -> tuple[int, int]:
    """Context side length and its top/left margin (pixels) that scale ``scale`` reads.

    At scale s a tile is predicted from the ``round(T / s)`` square centred on it, so the
    context reaches ``lo = (ctx - T) // 2`` pixels before the tile and ``ctx - T - lo`` after.
    """
    context = max(tile_size, round(tile_size / scale))
    return context, (context - tile_size) // 2


@dataclass(frozen=True)
class TileGrid:
    """The global grid of one experiment (see the module docstring for the geometry)."""

    origin_x: float
    origin_y: float
    resolution: float
    tile_size: int
    stride: int
    chunk_tiles: int
    halo_px: int

    @classmethod
    def from_experiment(cls, exp: Experiment) -> TileGrid:
        """The grid from ``grid.*``, with the halo the widest of ``inference.scales`` needs."""
        g = exp.grid
        halo = 0
        for scale in exp.inference.scales:
            context, lo = scale_context_px(g.tile_size, scale)
            halo = max(halo, lo, context - g.tile_size - lo)
        return cls(
            g.origin[0], g.origin[1], g.resolution, g.tile_size, g.stride, g.chunk_tiles, halo
        )

    # ids -------------------------------------------------------------------------------------
    @staticmethod
    def tile_id(col: int, row: int) -> str:
        """Global tile id, e.g. ``c012345_r006789`` (grid column and row of the tile)."""
        return f"c{col:0{ID_DIGITS_TILE}d}_r{row:0{ID_DIGITS_TILE}d}"

    @staticmethod
    def parse_tile_id(tile_id: str) -> tuple[int, int]:
        """(col, row) of a tile id; ValueError when it is not of the form ``cNNN_rNNN``."""
        c, _, r = tile_id.strip().partition("_")
        if not (c.startswith("c") and r.startswith("r") and c[1:].isdigit() and r[1:].isdigit()):
            raise ValueError(f"not an id of the form c012345_r006789: {tile_id!r}")
        return int(c[1:]), int(r[1:])

    @staticmethod
    def chunk_id(ccol: int, crow: int) -> str:
        """Chunk id, e.g. ``c00012_r00034`` (chunk column and row)."""
        return f"c{ccol:0{ID_DIGITS_CHUNK}d}_r{crow:0{ID_DIGITS_CHUNK}d}"

    @staticmethod
    def parse_chunk_id(chunk_id: str) -> tuple[int, int]:
        """(chunk col, chunk row) of a chunk id; ValueError when it is not ``cNNN_rNNN``."""
        return TileGrid.parse_tile_id(chunk_id)

    def chunk_of_tile(self, col: int, row: int) -> tuple[int, int]:
        """The chunk that holds tile (col, row): the one whose core holds its stride cell."""
        return col // self.chunk_tiles, row // self.chunk_tiles

    # pixel boxes -----------------------------------------------------------------------------
    @property
    def chunk_px(self) -> int:
        """Side of a chunk core in pixels (``chunk_tiles * stride``)."""
        return self.chunk_tiles * self.stride

    def tile_box(self, col: int, row: int) -> PixelBox:
        s, t = self.stride, self.tile_size
        return PixelBox(col * s, row * s, col * s + t, row * s + t)

    def chunk_core(self, ccol: int, crow: int) -> PixelBox:
        n = self.chunk_px
        return PixelBox(ccol * n, crow * n, (ccol + 1) * n, (crow + 1) * n)

    def chunk_footprint(self, ccol: int, crow: int) -> PixelBox:
        """Core plus the overhang (``tile_size - stride``) of its tiles: what it predicts."""
        core = self.chunk_core(ccol, crow)
        over = self.tile_size - self.stride
        return PixelBox(core.col0, core.row0, core.col1 + over, core.row1 + over)

    def chunk_store_box(self, ccol: int, crow: int) -> PixelBox:
        """Footprint plus the scale-context halo on every side: what its tile store holds."""
        f, h = self.chunk_footprint(ccol, crow), self.halo_px
        return PixelBox(f.col0 - h, f.row0 - h, f.col1 + h, f.row1 + h)

    def chunk_tiles_in(self, ccol: int, crow: int) -> Iterator[tuple[int, int]]:
        """(col, row) of the chunk's tiles, row by row."""
        k = self.chunk_tiles
        for row in range(crow * k, (crow + 1) * k):
            for col in range(ccol * k, (ccol + 1) * k):
                yield col, row

    def tiles_touching(self, box: PixelBox) -> tuple[range, range]:
        """Column and row ranges of the tiles whose pixels overlap ``box``."""
        s, t = self.stride, self.tile_size
        cols = range(max(0, -((t - box.col0 - 1) // s)), (box.col1 - 1) // s + 1)
        rows = range(max(0, -((t - box.row0 - 1) // s)), (box.row1 - 1) // s + 1)
        return cols, rows

    def chunks_touching(self, box: PixelBox) -> tuple[range, range]:
        """Chunk column and row ranges holding a tile that overlaps ``box``."""
        cols, rows = self.tiles_touching(box)
        k = self.chunk_tiles
        return (
            range(cols.start // k, (cols.stop - 1) // k + 1),
            range(rows.start // k, (rows.stop - 1) // k + 1),
        )

    # georeferencing --------------------------------------------------------------------------
    def transform(self, box: PixelBox) -> Affine:
        """Affine transform (map units of ``crs``) of an array covering ``box``."""
        res = self.resolution
        return Affine(
            res, 0.0, self.origin_x + box.col0 * res, 0.0, -res, self.origin_y - box.row0 * res
        )

    def bounds(self, box: PixelBox) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of ``box`` in ``crs`` units."""
        res = self.resolution
        return (
            self.origin_x + box.col0 * res,
            self.origin_y - box.row1 * res,
            self.origin_x + box.col1 * res,
            self.origin_y - box.row0 * res,
        )

    def box_of_bounds(self, bounds: tuple[float, float, float, float]) -> PixelBox:
        """Smallest box of whole pixels covering ``bounds`` (minx, miny, maxx, maxy in ``crs``).

        Edges within 1e-6 pixel of a lattice line snap to it, so exact bounds stay exact.
        """
        minx, miny, maxx, maxy = bounds
        res, eps = self.resolution, 1e-6
        return PixelBox(
            math.floor((minx - self.origin_x) / res + eps),
            math.floor((self.origin_y - maxy) / res + eps),
            math.ceil((maxx - self.origin_x) / res - eps),
            math.ceil((self.origin_y - miny) / res - eps),
        )

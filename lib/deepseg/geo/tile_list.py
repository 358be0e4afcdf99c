"""``grid.tile_list``: a CSV naming the only tiles a run predicts, checked against the grid."""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import Experiment
from ..core.errors import DeepSegError
from ..storage.cache import local_file
from .grid import TileGrid


def read_tile_list(path: Path, grid: TileGrid) -> set[tuple[int, int]]:
    """(col, row) of the tiles listed in a CSV with header ``tile_id,minx,miny,maxx,maxy``.

    Bounds (``crs`` units) must match this grid's tile to 1e-6 pixel: a list made for another
    ``grid.origin``, ``tile_size`` or ``stride`` is refused, not silently misread.
    """
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DeepSegError(f"{path}: cannot read the tile list ({exc.strerror})") from exc
    tiles = set()
    for line, row in enumerate(rows, start=2):
        try:
            col_row = grid.parse_tile_id(row["tile_id"])
            listed = [float(row[k]) for k in ("minx", "miny", "maxx", "maxy")]
        except (KeyError, TypeError, ValueError) as exc:
            raise DeepSegError(
                f"{path}:{line}: grid.tile_list: expected tile_id,minx,miny,maxx,maxy ({exc})"
            ) from exc
        expected = grid.bounds(grid.tile_box(*col_row))
        if max(abs(a - b) for a, b in zip(listed, expected, strict=True)) > 1e-6 * grid.resolution:
            raise DeepSegError(
                f"{path}:{line}: grid.tile_list: tile {row['tile_id']} has bounds {listed}, but "
                f"this grid puts it at {list(expected)}; was the list made with another "
                "grid.origin, tile_size or stride?"
            )
        tiles.add(col_row)
    return tiles


def listed_tiles(exp: Experiment, grid: TileGrid) -> set[tuple[int, int]] | None:
    """The tiles of ``grid.tile_list`` (a gs:// list is copied to the cache first), or None."""
    if exp.grid.tile_list is None:
        return None
    return read_tile_list(local_file(exp, exp.grid.tile_list), grid)

"""``grid.tile_list``: a CSV naming the only tiles a run predicts, checked against the grid.

A continent's list holds ~4e7 tiles, so it is read in blocks of rows by pandas' C parser and
checked with numpy, never row by row in Python, and held as one sorted int64 key per tile
(``col << 32 | row``, 8 bytes a tile) grouped by chunk, not as a set of tuples (~150 bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Experiment
from ..core.errors import DeepSegError
from ..storage.cache import local_file
from .grid import TileGrid

COLUMNS = ("tile_id", "minx", "miny", "maxx", "maxy")
BLOCK_ROWS = 250_000  # rows parsed at once: ~200 MB of arrays


def _key(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return (np.asarray(cols, np.int64) << 32) | np.asarray(rows, np.int64)


class TileList:
    """The listed tiles, by chunk: ``keys`` sorted by (chunk row, chunk col, col, row)."""

    def __init__(self, keys: np.ndarray, chunk_tiles: int) -> None:
        """``keys``: ``col << 32 | row`` per listed tile, in any order, repeats allowed."""
        keys = np.sort(keys)
        keys = keys[np.append(True, keys[1:] != keys[:-1])[: len(keys)]]  # faster than unique
        cols, rows = keys >> 32, keys & 0xFFFFFFFF
        chunk = _key(cols // chunk_tiles, rows // chunk_tiles)
        order = np.lexsort((keys, chunk))
        self.keys, chunk = keys[order], chunk[order]
        self.chunk_keys, self.starts = np.unique(chunk, return_index=True)
        self.ends = np.append(self.starts[1:], len(self.keys))
        self.chunk_tiles = chunk_tiles

    def __len__(self) -> int:
        return len(self.keys)

    def _slice(self, ccol: int, crow: int) -> np.ndarray:
        i = int(np.searchsorted(self.chunk_keys, _key(ccol, crow)))
        if i == len(self.chunk_keys) or self.chunk_keys[i] != _key(ccol, crow):
            return self.keys[:0]
        return self.keys[self.starts[i] : self.ends[i]]

    def in_chunk(self, ccol: int, crow: int) -> list[tuple[int, int]]:
        """The chunk's listed tiles as (col, row), sorted by column then row."""
        keys = self._slice(ccol, crow)
        return list(zip((keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist(), strict=True))

    def contains(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per tile (col, row), whether it is listed."""
        keys = _key(cols, rows)
        chunk = _key(np.asarray(cols) // self.chunk_tiles, np.asarray(rows) // self.chunk_tiles)
        out = np.zeros(keys.shape, dtype=bool)
        for c in np.unique(chunk):
            inside = self._slice(int(c >> 32), int(c & 0xFFFFFFFF))
            at = chunk == c
            out[at] = np.isin(keys[at], inside)
        return out

    def __contains__(self, tile: tuple[int, int]) -> bool:
        return bool(self.contains(np.array([tile[0]]), np.array([tile[1]]))[0])

    def chunks(self) -> set[tuple[int, int]]:
        """(ccol, crow) of every chunk holding a listed tile."""
        ccols, crows = (self.chunk_keys >> 32).tolist(), (self.chunk_keys & 0xFFFFFFFF).tolist()
        return set(zip(ccols, crows, strict=True))


def _blocks(path: Path) -> Iterator[pd.DataFrame]:
    numbers = dict.fromkeys(COLUMNS[1:], np.float64)
    try:
        yield from pd.read_csv(path, dtype={"tile_id": str, **numbers}, chunksize=BLOCK_ROWS,
                               skipinitialspace=True)  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepSegError(f"{path}: cannot read the tile list ({exc})") from exc
    except pd.errors.EmptyDataError:
        raise DeepSegError(
            f"{path}: grid.tile_list is empty; expected the header {','.join(COLUMNS)}"
        ) from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DeepSegError(
            f"{path}:{_first_bad_line(path)}: grid.tile_list: expected {','.join(COLUMNS)} "
            f"with an id like c012345_r006789 and numbers ({exc})"
        ) from None


def _first_bad_line(path: Path) -> str:
    """The line of the first row whose bounds are not numbers (the slow path, for errors)."""
    line = 2
    try:
        for block in pd.read_csv(path, dtype=str, chunksize=BLOCK_ROWS, keep_default_na=False):
            cells = block.reindex(columns=list(COLUMNS[1:]))
            bad = cells.apply(pd.to_numeric, errors="coerce").isna().any(axis=1).to_numpy()
            if bad.any():
                return str(line + int(np.argmax(bad)))
            line += len(block)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        pass
    return "?"


def _as_bytes(ids: np.ndarray) -> np.ndarray:
    try:
        return ids.astype("S")
    except UnicodeEncodeError:  # not an id: keeps its row, fails the checks
        return np.array([str(i).encode("ascii", "replace") for i in ids], dtype="S")


def _parse_ids(ids: np.ndarray) -> np.ndarray:
    """(n, 2) col, row of ids ``cNNN_rNNN``, -1 where an id is not of that form: arithmetic on
    the ids' bytes, not a regex per id (~2 us each, 80 s for a continent's list)."""
    raw = _as_bytes(ids)
    n, width = len(raw), raw.dtype.itemsize
    out = np.full((n, 2), -1, np.int64)
    if n == 0 or width < 4:
        return out
    b = raw.view(np.uint8).reshape(n, width)
    length, pos, at = (b != 0).sum(axis=1), np.arange(width), np.arange(n)
    under = np.argmax(b == ord("_"), axis=1)
    digit = (b >= ord("0")) & (b <= ord("9"))
    in_col = (pos >= 1) & (pos < under[:, None])
    in_row = (pos >= under[:, None] + 2) & (pos < length[:, None])
    ok = (b[:, 0] == ord("c")) & (b[at, under] == ord("_")) & (under >= 2) & (under <= 13)
    ok &= b[at, np.minimum(under + 1, width - 1)] == ord("r")
    ok &= (length >= under + 3) & (length - under <= 14)  # at most 12 digits: no overflow
    ok &= (digit | ~(in_col | in_row)).all(axis=1)
    values = np.where(digit, b.astype(np.int64) - ord("0"), 0)
    col_power = np.where(in_col, 10 ** np.clip(under[:, None] - 1 - pos, 0, 12), 0)
    row_power = np.where(in_row, 10 ** np.clip(length[:, None] - 1 - pos, 0, 12), 0)
    out[ok, 0] = (values * col_power).sum(axis=1)[ok]
    out[ok, 1] = (values * row_power).sum(axis=1)[ok]
    return out


def _check_block(path: Path, block: pd.DataFrame, first_line: int, grid: TileGrid):
    """(cols, rows) of a block of rows, or DeepSegError naming its first bad line."""
    missing = [c for c in COLUMNS if c not in block.columns]
    if missing:
        raise DeepSegError(
            f"{path}:1: grid.tile_list: expected the header {','.join(COLUMNS)} (no {missing[0]})"
        )
    ids = _parse_ids(block["tile_id"].fillna("").str.strip().to_numpy(str))
    bounds = block[list(COLUMNS[1:])].to_numpy(np.float64)
    bad = (ids < 0).any(axis=1) | np.isnan(bounds).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DeepSegError(
            f"{path}:{first_line + i}: grid.tile_list: expected {','.join(COLUMNS)} with an id "
            f"like c012345_r006789 and numbers, got {','.join(map(str, block.iloc[i].tolist()))}"
        )
    cols, rows = ids[:, 0], ids[:, 1]
    s, t, res = grid.stride, grid.tile_size, grid.resolution
    expected = np.column_stack([
        grid.origin_x + cols * s * res, grid.origin_y - (rows * s + t) * res,
        grid.origin_x + (cols * s + t) * res, grid.origin_y - rows * s * res,
    ])  # fmt: skip
    off = (np.abs(bounds - expected) > 1e-6 * res).any(axis=1)
    if off.any():
        i = int(np.argmax(off))
        raise DeepSegError(
            f"{path}:{first_line + i}: grid.tile_list: tile {block['tile_id'].iloc[i].strip()} "
            f"has bounds {bounds[i].tolist()}, but this grid puts it at {expected[i].tolist()}; "
            "was the list made with another grid.origin, tile_size or stride?"
        )
    return cols, rows


def read_tile_list(path: Path, grid: TileGrid) -> TileList:
    """The tiles listed in a CSV with header ``tile_id,minx,miny,maxx,maxy``.

    Bounds (``crs`` units) must match this grid's tile to 1e-6 pixel: a list made for another
    ``grid.origin``, ``tile_size`` or ``stride`` is refused, not silently misread.
    """
    keys, line = [], 2
    for block in _blocks(path):
        keys.append(_key(*_check_block(path, block, line, grid)))
        line += len(block)
    if not keys:
        _check_block(path, pd.DataFrame(columns=list(COLUMNS)), line, grid)
    return TileList(np.concatenate(keys or [np.zeros(0, np.int64)]), grid.chunk_tiles)


def listed_tiles(exp: Experiment, grid: TileGrid) -> TileList | None:
    """The tiles of ``grid.tile_list`` (a gs:// list is copied to the cache first), or None."""
    if exp.grid.tile_list is None:
        return None
    return read_tile_list(local_file(exp, exp.grid.tile_list), grid)

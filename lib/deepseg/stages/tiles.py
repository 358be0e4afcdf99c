"""Stage ``create_tiles``: choose the grid tiles over the input and stage them, one store per chunk.

A tile is kept when it touches valid input data (and, with ``grid.tile_list``, when it is
listed); a tile over an input's footprint whose pixels are all invalid is skipped and counted
(``tiles_no_data``: one warning per run, not a line per tile). Each chunk with at least one
kept tile gets one tile store (see ``stores.tile_store``) holding its pixels once, halo
included, so no pixel is staged four times as with one file per tile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..config import Experiment
from ..core.errors import DeepSegError
from ..geo.grid import PixelBox, TileGrid
from ..geo.sources import InputRaster, open_inputs, read_box
from ..geo.tile_list import TileList, listed_tiles
from ..model.card import read_model_card
from ..model.folder import local_model_dir
from ..run.driver import run
from ..run.manifest import digest
from ..run.stage import Stage, UnitResult
from ..storage.paths import TILE_STORE, RunPaths
from ..stores.layout import StorePlace, check_on_grid
from ..stores.tile_store import TileStore, TileTable, read_tile_header, write_tile_store

log = logging.getLogger(__name__)


def candidate_chunks(
    inputs: list[InputRaster], grid: TileGrid, listed: TileList | None
) -> list[tuple[int, int]]:
    """Chunks holding a tile that overlaps an input's footprint (and is listed, if a list is)."""
    chunks: set[tuple[int, int]] = set()
    for raster in inputs:
        if raster.box.col0 < 0 or raster.box.row0 < 0:
            raise DeepSegError(
                f"{raster.path}: lies left of or above grid.origin; move grid.origin to the "
                "top-left of all inputs"
            )
        cols, rows = grid.chunks_touching(raster.box)
        chunks.update((c, r) for r in rows for c in cols)
    if listed is not None:
        chunks &= listed.chunks()
    return sorted(chunks, key=lambda cr: (cr[1], cr[0]))


def chunk_tiles(
    grid: TileGrid,
    chunk: tuple[int, int],
    box: PixelBox,
    valid: np.ndarray,
    listed: TileList | None,
    over: list[PixelBox] | None = None,
) -> tuple[TileTable, int]:
    """The chunk's tiles that touch valid data, with their offsets inside the store ``box``,
    and how many candidate tiles were skipped for having none: listed (if a list is set)
    tiles overlapping one of the boxes ``over`` (the inputs' footprints, grid pixels)."""
    rows: list[tuple] = []
    no_data = 0
    here = None if listed is None else set(listed.in_chunk(*chunk))
    fractions = valid_fractions(grid, chunk, box, valid)
    first_col, first_row = chunk[0] * grid.chunk_tiles, chunk[1] * grid.chunk_tiles
    for col, row in grid.chunk_tiles_in(*chunk):
        if here is not None and (col, row) not in here:
            continue
        tile = grid.tile_box(col, row)
        fraction = float(fractions[row - first_row, col - first_col])
        if fraction == 0:
            no_data += any(tile.intersection(b) is not None for b in over or [])
        else:
            rows.append(
                (
                    grid.tile_id(col, row).encode(),
                    col,
                    row,
                    tile.row0 - box.row0,
                    tile.col0 - box.col0,
                    grid.bounds(tile),
                    fraction,
                )
            )
    if not rows:
        empty = TileTable(
            *(np.empty(0, dtype=d) for d in ("S15", "i8", "i8", "i8", "i8")),
            bounds=np.empty((0, 4)),
            valid_fraction=np.empty(0, dtype=np.float32),
        )
        return empty, no_data
    ids, cols, rws, roff, coff, bounds, frac = zip(*rows, strict=True)
    table = TileTable(
        tile_id=np.array(ids),
        col=np.array(cols, dtype=np.int64),
        row=np.array(rws, dtype=np.int64),
        row_off=np.array(roff, dtype=np.int64),
        col_off=np.array(coff, dtype=np.int64),
        bounds=np.array(bounds, dtype=np.float64),
        valid_fraction=np.array(frac, dtype=np.float32),
    )
    return table, no_data


def valid_fractions(
    grid: TileGrid, chunk: tuple[int, int], box: PixelBox, valid: np.ndarray
) -> np.ndarray:
    """(rows, cols) float64: the valid share of each of the chunk's tiles, from ``valid``
    over the store ``box``. The pixels are counted once, per stride-square block, and each
    tile sums its blocks; tiles overlap, so reading each tile would count most pixels 4x."""
    n, s, t = grid.chunk_tiles, grid.stride, grid.tile_size
    first = grid.tile_box(chunk[0] * n, chunk[1] * n)
    r0, c0 = first.row0 - box.row0, first.col0 - box.col0
    if t % s:  # tiles not made of whole blocks: each tile read on its own
        return np.array([[valid[r0 + i * s : r0 + i * s + t, c0 + j * s : c0 + j * s + t].mean()
                          for j in range(n)] for i in range(n)])  # fmt: skip
    k, side = t // s, n + t // s - 1  # blocks per tile side; per chunk side
    region = valid[r0 : r0 + side * s, c0 : c0 + side * s].view(np.uint8)
    blocks = region.reshape(side, s, side, s).sum(axis=(1, 3), dtype=np.int64)
    counts = sum(blocks[i : i + n, j : j + n] for i in range(k) for j in range(k))
    return counts / (t * t)


def tiling_units(exp: Experiment) -> list[str]:
    """Ids of the chunks that may hold tiles (a tile over an input, listed if a list is set)."""
    grid = TileGrid.from_experiment(exp)
    inputs = open_inputs(exp, grid)
    listed = listed_tiles(exp, grid)
    chunks = candidate_chunks(inputs, grid, listed)
    log.info(
        "%d input raster(s), %d candidate chunk(s) of %dx%d tiles (halo %d px)",
        len(inputs),
        len(chunks),
        grid.chunk_tiles,
        grid.chunk_tiles,
        grid.halo_px,
    )
    return sorted(grid.chunk_id(*chunk) for chunk in chunks)


class TilingWorker:
    """Stages chunks of one experiment: the inputs are opened once per process."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.paths = RunPaths.of(exp)
        self.inputs = open_inputs(exp, self.grid)
        self.listed = listed_tiles(exp, self.grid)
        bands = zip(self.inputs[0].descriptions, exp.input.bands, strict=True)
        self.band_names = tuple(d or f"band {b}" for d, b in bands)

    def run(self, unit: str) -> UnitResult:
        """Write the chunk's tile store, or none (removing an older one) when it has no tiles."""
        chunk = TileGrid.parse_chunk_id(unit)
        target = self.paths.tile_store(unit)
        box = self.grid.chunk_store_box(*chunk)
        pixels, valid = read_box(self.inputs, self.exp, self.grid, box)
        footprints = [r.box for r in self.inputs]
        tiles, no_data = chunk_tiles(self.grid, chunk, box, valid, self.listed, footprints)
        if len(tiles) == 0:
            target.unlink(missing_ok=True)  # a --force rerun may find an older store
            return UnitResult([], {"tiles": 0, "tiles_no_data": no_data, "chunks_empty": 1})
        nodata, names = self.inputs[0].nodata, self.band_names
        place = StorePlace.on_grid(self.grid, self.exp.crs, chunk, box)
        write_tile_store(target, TileStore(place, pixels, valid, tiles, nodata, names))
        counts = {"tiles": len(tiles), "tiles_no_data": no_data, "chunks_written": 1}
        return UnitResult([target], counts)


def check_model_and_grid(exp: Experiment, download: bool = True) -> None:
    """Refuse, before anything is written, a model folder that cannot work with
    ``input.bands``, or tile stores of this output made on another grid (the first one is
    looked at; with ``download=False`` the first one already on this machine, for a gs://
    run): staging hours of tiles for a model that cannot read them helps nobody."""
    read_model_card(local_model_dir(exp), len(exp.input.bands), exp.model.expected_data_version)
    paths = RunPaths.of(exp)
    staged = [p for p in paths.tile_stores() if download or p.is_file()]
    if staged:
        grid = TileGrid.from_experiment(exp)
        place = read_tile_header(paths.local(staged[0]))
        check_on_grid(staged[0], place, grid, exp.crs, grid.chunk_store_box(*place.chunk))


def tiles_made_from(exp: Experiment) -> Callable[[str], str]:
    """Chunk id -> digest of what its tile store is made from: the input rasters (by path),
    bands, nodata, resampling, CRS and grid, and the listed tiles inside the chunk (so sharing
    a tile list out among machines keeps each chunk's digest)."""
    grid = TileGrid.from_experiment(exp)
    listed = listed_tiles(exp, grid)
    settings = exp.to_dict()
    inputs = {k: settings["input"][k] for k in ("rasters", "bands", "nodata", "resampling")}
    layout = {k: v for k, v in settings["grid"].items() if k != "tile_list"}
    common = (settings["crs"], layout, inputs, exp.input.non_square_pixels)

    def made_from(unit: str) -> str:
        chunk = grid.parse_chunk_id(unit)
        return digest(common, None if listed is None else listed.in_chunk(*chunk))

    return made_from


STAGE = Stage(
    name="create_tiles",
    units=tiling_units,
    expected=lambda exp, unit: [TILE_STORE.format(unit)],
    worker=TilingWorker,
    check=lambda exp: check_model_and_grid(exp, download=False),
    made_from=tiles_made_from,
)


def create_tiles(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Stage every chunk that has tiles (see ``run.driver.run``); one warning tells how many
    tiles over the input this run skipped for having no valid data."""
    summary = run(STAGE, exp, force=force, shard=shard)
    skipped = summary["counts"].get("tiles_no_data", 0)
    if skipped:
        log.warning(
            "create_tiles: %d tile(s) over the input(s) have no valid data (nodata or mask "
            "everywhere) and were skipped; %d tile(s) staged",
            skipped,
            summary["counts"].get("tiles", 0),
        )
    return summary

"""Tile stores ``tiles/{chunk}.kea``: a chunk's input pixels over its store box, its tiles.

The layout is in ``layout``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..formats import kea
from ..geo.grid import PixelBox
from ..storage.paths import atomic_path
from .layout import GROUP, StorePlace, read_header, write_dataset, write_header


@dataclass(frozen=True)
class TileTable:
    """The tiles of one chunk (columns of equal length)."""

    tile_id: np.ndarray  # bytes (n,)
    col: np.ndarray  # int64 (n,)
    row: np.ndarray  # int64 (n,)
    row_off: np.ndarray  # int64 (n,), pixels inside the store
    col_off: np.ndarray  # int64 (n,)
    bounds: np.ndarray  # float64 (n, 4), crs units
    valid_fraction: np.ndarray  # float32 (n,)

    def __len__(self) -> int:
        return len(self.tile_id)


@dataclass(frozen=True)
class TileStore:
    """A tile store in memory: the chunk's pixels, validity and tiles, and where it sits."""

    place: StorePlace
    pixels: np.ndarray  # (bands, rows, cols), input dtype
    valid: np.ndarray  # (rows, cols) bool
    tiles: TileTable
    nodata: float | None = None  # the input's nodata value, in its dtype
    descriptions: tuple[str, ...] = ()  # band names; default "band 1", "band 2", ...

    @property
    def chunk(self) -> tuple[int, int]:
        return self.place.chunk

    @property
    def box(self) -> PixelBox:
        return self.place.box


def write_tile_store(path: Path, store: TileStore) -> None:
    """Write a tile store atomically (temporary name, then rename)."""
    bands = store.pixels.shape[0]
    names = store.descriptions or tuple(f"band {i + 1}" for i in range(bands))
    info = store.place.kea_info(store.pixels.dtype, bands, store.nodata, names)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kea.create(f, info)
            for band in range(bands):
                kea.write_band(f, band + 1, store.pixels[band])
            group = write_header(f, "tiles", store.place)
            write_dataset(group, "valid", store.valid.astype(np.uint8))
            table = group.create_group("tiles")
            for name in TileTable.__dataclass_fields__:
                table.create_dataset(name, data=getattr(store.tiles, name))


def read_tile_store(path: Path) -> TileStore:
    """Read a whole tile store (a chunk is a few tens of MB at most)."""
    with kea.open_kea(path) as (f, info):
        place = read_header(f, info, "tiles")
        pixels = np.stack([kea.read_band(f, b + 1) for b in range(info.count)])
        valid = f[GROUP]["valid"][()].astype(bool)
        table = f[GROUP]["tiles"]
        tiles = TileTable(**{name: table[name][()] for name in TileTable.__dataclass_fields__})
    return TileStore(place, pixels, valid, tiles, info.nodata[0], tuple(info.descriptions))


def read_tile_ids(path: Path) -> list[str]:
    """The ids of a tile store's tiles (its table alone, not its pixels)."""
    with kea.open_kea(path) as (f, info):
        read_header(f, info, "tiles")
        return [t.decode() for t in f[GROUP]["tiles"]["tile_id"][()]]


def read_tile_header(path: Path) -> StorePlace:
    """Where a tile store sits (chunk, box, georeferencing), without its pixels."""
    with kea.open_kea(path) as (f, info):
        return read_header(f, info, "tiles")

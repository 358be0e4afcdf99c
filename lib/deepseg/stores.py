"""The per-chunk HDF5 stores: tile stores (input pixels) and probability stores (predictions).

Both are KEA files (see ``kea``), so any GDAL with the KEA driver opens them as georeferenced
images in the experiment's ``crs``; DeepSeg's own tables live in the extra group ``/DEEPSEG``,
which KEA readers ignore. This module is the only reader and writer of that group.

Tile store ``tiles/{chunk}.kea`` covers the chunk's *store box* (footprint plus halo, see
``grid``): bands = ``input.bands`` in the input's data type and nodata, plus

    /DEEPSEG@kind = "tiles", @chunk_col, @chunk_row, @box = [col0, row0, col1, row1] (grid px)
    /DEEPSEG/valid             uint8 (rows, cols): 1 where the input had valid data
    /DEEPSEG/tiles/tile_id     fixed bytes (n,): e.g. b"c012345_r006789"
    /DEEPSEG/tiles/col, row    int64 (n,): grid column and row of each tile
    /DEEPSEG/tiles/row_off, col_off   int64 (n,): tile's top-left pixel inside the store
    /DEEPSEG/tiles/bounds      float64 (n, 4): minx, miny, maxx, maxy in ``crs``
    /DEEPSEG/tiles/valid_fraction     float32 (n,): share of the tile's pixels that are valid

Probability store ``predictions/{chunk}.kea`` covers the chunk's *footprint*: one float32
band "probability" in [0, 1], nodata -1 (no valid input or no tile), plus

    /DEEPSEG@kind = "probability", @chunk_col, @chunk_row, @box, @threshold, @scales,
            @valid_box (grid px holding a probability), @merge_method ("max" | "sinusoidal")
    /DEEPSEG/scale_hits        uint8 (rows, cols): bit i set where scale i reached @threshold
    /DEEPSEG/weight            float32 (rows, cols), sinusoidal only: the sum of the tiles'
                               window weights, so neighbouring stores merge by weighted mean
    /DEEPSEG/tiles/tile_id     fixed bytes (n,): the tiles predicted into it (``check`` reads)

A store sits where the experiment's grid puts its chunk (``check_on_grid``): its box, its
georeferencing and its CRS; one staged under other ``grid.*`` settings is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from rasterio.crs import CRS

from . import kea
from .errors import DeepSegError
from .grid import PixelBox, TileGrid
from .outputs import atomic_path

GROUP = "DEEPSEG"
PROB_NODATA = -1.0


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
    """A tile store read into memory: the chunk's pixels, validity and tiles."""

    chunk: tuple[int, int]
    box: PixelBox
    pixels: np.ndarray  # (bands, rows, cols), input dtype
    valid: np.ndarray  # (rows, cols) bool
    tiles: TileTable
    info: kea.KeaInfo


def _kea_info(
    grid: TileGrid,
    box: PixelBox,
    crs: str,
    dtype: np.dtype,
    count: int,
    nodata: float | None,
    descriptions: tuple[str, ...],
) -> kea.KeaInfo:
    return kea.KeaInfo(
        width=box.width,
        height=box.height,
        count=count,
        dtype=np.dtype(dtype),
        transform=grid.transform(box),
        crs_wkt=CRS.from_user_input(crs).to_wkt(version="WKT1_GDAL"),
        nodata=(nodata,) * count,
        descriptions=descriptions,
    )


def _write_header(f: h5py.File, kind: str, chunk: tuple[int, int], box: PixelBox) -> h5py.Group:
    group = f.create_group(GROUP)
    group.attrs["kind"] = kind
    group.attrs["chunk_col"], group.attrs["chunk_row"] = chunk
    group.attrs["box"] = np.asarray(box, dtype=np.int64)
    return group


def _read_box(f: h5py.File, kind: str) -> tuple[tuple[int, int], PixelBox]:
    group = f.get(GROUP)
    if group is None or group.attrs.get("kind") != kind:
        raise kea.KeaError(f"{f.filename}: not a DeepSeg {kind} store (no /{GROUP} of that kind)")
    chunk = (int(group.attrs["chunk_col"]), int(group.attrs["chunk_row"]))
    return chunk, PixelBox(*(int(v) for v in group.attrs["box"]))


def write_tile_store(
    path: Path,
    grid: TileGrid,
    crs: str,
    chunk: tuple[int, int],
    box: PixelBox,
    pixels: np.ndarray,
    valid: np.ndarray,
    nodata: float | None,
    tiles: TileTable,
    descriptions: tuple[str, ...] = (),
) -> None:
    """Write a tile store atomically (temporary name, then rename).

    ``descriptions`` name the bands (e.g. the input's "red"); default "band 1", "band 2", ...
    """
    descriptions = descriptions or tuple(f"band {i + 1}" for i in range(pixels.shape[0]))
    info = _kea_info(grid, box, crs, pixels.dtype, pixels.shape[0], nodata, descriptions)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kea.create(f, info)
            for band in range(pixels.shape[0]):
                kea.write_band(f, band + 1, pixels[band])
            group = _write_header(f, "tiles", chunk, box)
            _dataset(group, "valid", valid.astype(np.uint8))
            table = group.create_group("tiles")
            for name in TileTable.__dataclass_fields__:
                table.create_dataset(name, data=getattr(tiles, name))


def _dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    chunks = tuple(min(512, n) for n in data.shape)
    group.create_dataset(
        name, data=data, chunks=chunks, shuffle=True, compression="gzip", compression_opts=1
    )


def read_tile_store(path: Path) -> TileStore:
    """Read a whole tile store (a chunk is a few tens of MB at most)."""
    with kea.open_kea(path) as (f, info):
        chunk, box = _read_box(f, "tiles")
        pixels = np.stack([kea.read_band(f, b + 1) for b in range(info.count)])
        valid = f[GROUP]["valid"][()].astype(bool)
        table = f[GROUP]["tiles"]
        tiles = TileTable(**{name: table[name][()] for name in TileTable.__dataclass_fields__})
    return TileStore(chunk, box, pixels, valid, tiles, info)


def write_prob_store(
    path: Path,
    grid: TileGrid,
    crs: str,
    chunk: tuple[int, int],
    box: PixelBox,
    prob: np.ndarray,
    scale_hits: np.ndarray,
    threshold: float,
    scales: tuple[float, ...],
    weight: np.ndarray | None = None,
    tile_ids: np.ndarray | None = None,
) -> None:
    """Write a probability store atomically; ``prob`` is float32 with nodata -1.

    ``weight`` (sinusoidal merge only) is the sum of the tiles' window weights per pixel;
    ``tile_ids`` (bytes) name the tiles predicted.
    """
    info = _kea_info(grid, box, crs, np.float32, 1, PROB_NODATA, ("probability",))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kea.create(f, info)
            kea.write_band(f, 1, prob.astype(np.float32, copy=False))
            group = _write_header(f, "probability", chunk, box)
            group.attrs["threshold"] = float(threshold)
            group.attrs["scales"] = np.asarray(scales, dtype=np.float64)
            group.attrs["valid_box"] = np.asarray(_valid_box(prob, box), dtype=np.int64)
            group.attrs["merge_method"] = "max" if weight is None else "sinusoidal"
            _dataset(group, "scale_hits", scale_hits.astype(np.uint8, copy=False))
            if weight is not None:
                _dataset(group, "weight", weight.astype(np.float32, copy=False))
            if tile_ids is not None:
                group.create_group("tiles").create_dataset("tile_id", data=tile_ids)


def _valid_box(prob: np.ndarray, box: PixelBox) -> PixelBox:
    """Grid-pixel box of the store's pixels that hold a probability (empty box if none)."""
    rows = np.flatnonzero((prob != PROB_NODATA).any(axis=1))
    cols = np.flatnonzero((prob != PROB_NODATA).any(axis=0))
    if rows.size == 0:
        return PixelBox(box.col0, box.row0, box.col0, box.row0)
    return PixelBox(
        box.col0 + int(cols[0]),
        box.row0 + int(rows[0]),
        box.col0 + int(cols[-1]) + 1,
        box.row0 + int(rows[-1]) + 1,
    )


@dataclass(frozen=True)
class ProbWindow:
    """A probability store's values over a window (grid px): -1 / 0 / 0 outside the store."""

    prob: np.ndarray  # float32, nodata -1
    hits: np.ndarray  # uint8 scale bits
    weight: np.ndarray | None  # float32 window-weight sums; None for stores merged by max


def read_prob_window(path: Path, window: PixelBox) -> ProbWindow | None:
    """A store's values over ``window``; None when the store does not overlap it."""
    with kea.open_kea(path) as (f, info):
        _, box = _read_box(f, "probability")
        part = box.intersection(window)
        if part is None:
            return None
        rows, cols = part.slices_in(box)
        shape, inner = (window.height, window.width), part.slices_in(window)
        prob = np.full(shape, PROB_NODATA, dtype=np.float32)
        hits = np.zeros(shape, dtype=np.uint8)
        prob[inner] = kea.read_window(f, rows.start, cols.start, part.height, part.width)[0]
        hits[inner] = f[GROUP]["scale_hits"][rows, cols]
        weight = None
        if "weight" in f[GROUP]:
            weight = np.zeros(shape, dtype=np.float32)
            weight[inner] = f[GROUP]["weight"][rows, cols]
    return ProbWindow(prob, hits, weight)


def read_prob_attrs(path: Path) -> dict[str, object]:
    """Chunk, box, threshold and scales recorded in a probability store."""
    with kea.open_kea(path) as (f, _):
        chunk, box = _read_box(f, "probability")
        attrs = f[GROUP].attrs
        return {
            "chunk": chunk,
            "box": box,
            "threshold": float(attrs["threshold"]),
            "scales": tuple(float(s) for s in attrs["scales"]),
            "valid_box": PixelBox(*(int(v) for v in attrs["valid_box"])),
            "merge_method": str(attrs.get("merge_method", "max")),
        }


def read_prob_tile_ids(path: Path) -> list[str] | None:
    """The ids of the tiles predicted into a probability store (None: it does not say)."""
    with kea.open_kea(path) as (f, _):
        _read_box(f, "probability")
        tiles = f[GROUP].get("tiles")
        if tiles is None or "tile_id" not in tiles:
            return None
        return [t.decode() for t in tiles["tile_id"][()]]


def read_tile_ids(path: Path) -> list[str]:
    """The ids of a tile store's tiles (its table alone, not its pixels)."""
    with kea.open_kea(path) as (f, _):
        _read_box(f, "tiles")
        return [t.decode() for t in f[GROUP]["tiles"]["tile_id"][()]]


def read_tile_header(path: Path) -> tuple[tuple[int, int], PixelBox, kea.KeaInfo]:
    """A tile store's chunk, box and georeferencing, without its pixels."""
    with kea.open_kea(path) as (f, info):
        chunk, box = _read_box(f, "tiles")
    return chunk, box, info


def check_on_grid(
    path: Path,
    chunk: tuple[int, int],
    box: PixelBox,
    info: kea.KeaInfo,
    grid: TileGrid,
    crs: str,
    expected: PixelBox,
) -> None:
    """Raise DeepSegError naming ``path`` when the store is not where ``grid`` puts its chunk:
    ``chunk`` differs from its file name's, ``box`` from ``expected`` (grid pixels), or its
    geotransform or CRS from the grid's (``grid.*`` or ``crs`` changed since it was made)."""
    if chunk != grid.parse_chunk_id(path.stem):
        why = f"it holds chunk {grid.chunk_id(*chunk)}"
    elif box != expected:
        why = f"it covers grid pixels {list(box)}, this grid puts its chunk at {list(expected)}"
    elif not info.transform.almost_equals(grid.transform(box), 1e-6 * grid.resolution):
        why = f"its geotransform {tuple(info.transform)[:6]} is not this grid's"
    elif CRS.from_wkt(info.crs_wkt) != CRS.from_user_input(crs):
        why = f"its CRS is not {crs}"
    else:
        return
    raise DeepSegError(
        f"{path}: made on another grid ({why}); grid.*, crs or inference.scales changed since "
        "it was written: restore them, or write this run to a new output.path (or delete "
        "that folder's tiles/ and predictions/ first)"
    )

"""The per-chunk HDF5 stores: tile stores (input pixels) and probability stores (predictions).

Both are KEA files (see ``kea``), so any GDAL with the KEA driver opens them as georeferenced
images in the experiment's ``crs``; DeepSeg's own tables live in the extra group ``/DEEPSEG``,
which KEA readers ignore. This package is the only reader and writer of that group:
``layout`` (the header every store carries, the grid check), ``tile_store``, ``prob_store``;
``chunk_io`` reads and writes them in the background.

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
    /DEEPSEG/block_max         float32 (ceil(rows / 256), ceil(cols / 256)): per 256 px block
                               of the box (the band's HDF5 chunk), its highest probability
                               (-1: none), so a reader skips blocks below its threshold
    /DEEPSEG/block_valid       int32 (the same shape): per block, how many pixels hold one
    /DEEPSEG/tiles/tile_id     fixed bytes (n,): the tiles predicted into it (``check`` reads)

A K-class store (the model's config.yaml names its classes) has K float32 bands instead, one
per class (descriptions: the class names), the class probabilities of each pixel, plus
``@classes`` (names) and ``@class_colours`` (uint8 (K, 3) RGB); ``scale_hits`` bit i is set
where scale i's top class is the fused one; there are no ``block_*`` summaries.

The probability band and the datasets of its shape are chunked in ``PROB_BLOCK_PX`` blocks
(stores written before the block summaries have 512 px chunks and no ``block_*``: still read).

A store sits where the experiment's grid puts its chunk (``check_on_grid``): its box, its
georeferencing and its CRS; one staged under other ``grid.*`` settings is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..core.errors import DeepSegError
from ..formats.deflate import write_array
from ..formats.kea import KeaError, KeaInfo
from ..geo.grid import PixelBox, TileGrid

GROUP = "DEEPSEG"
PROB_NODATA = -1.0
PROB_BLOCK_PX = 256  # probability stores' chunk side: what a reader can skip, px


def holds_probability(prob: np.ndarray) -> np.ndarray:
    """(h, w) bool: the pixels holding a probability, of an (h, w) probability map or of the
    (K, h, w) probabilities of a K-class one (nodata is -1 in every class alike)."""
    return prob.reshape(-1, *prob.shape[-2:])[0] != PROB_NODATA


@dataclass(frozen=True)
class StorePlace:
    """Where a store sits: its chunk (column, row), its box (grid px) and its georeferencing
    (``transform`` of the box's top-left pixel, CRS as WKT1_GDAL, as KEA records it)."""

    chunk: tuple[int, int]
    box: PixelBox
    transform: Affine
    crs_wkt: str

    @classmethod
    def on_grid(cls, grid: TileGrid, crs: str, chunk: tuple[int, int], box: PixelBox) -> StorePlace:
        """The place ``grid`` (in ``crs``) gives chunk ``chunk`` over ``box``."""
        wkt = CRS.from_user_input(crs).to_wkt(version="WKT1_GDAL")
        return cls(chunk, box, grid.transform(box), wkt)

    def kea_info(
        self, dtype: np.dtype, count: int, nodata: float | None, descriptions: tuple[str, ...]
    ) -> KeaInfo:
        """The KEA image header of a store here with ``count`` bands of ``dtype``."""
        return KeaInfo(
            width=self.box.width,
            height=self.box.height,
            count=count,
            dtype=np.dtype(dtype),
            transform=self.transform,
            crs_wkt=self.crs_wkt,
            nodata=(nodata,) * count,
            descriptions=descriptions,
        )


def write_header(f: h5py.File, kind: str, place: StorePlace) -> h5py.Group:
    """Create ``/DEEPSEG`` for a store of ``kind`` ("tiles" or "probability") at ``place``."""
    group = f.create_group(GROUP)
    group.attrs["kind"] = kind
    group.attrs["chunk_col"], group.attrs["chunk_row"] = place.chunk
    group.attrs["box"] = np.asarray(place.box, dtype=np.int64)
    return group


def read_header(f: h5py.File, info: KeaInfo, kind: str) -> StorePlace:
    """The place of an open store of ``kind``; KeaError when it is not one."""
    group = f.get(GROUP)
    if group is None or group.attrs.get("kind") != kind:
        raise KeaError(f"{f.filename}: not a DeepSeg {kind} store (no /{GROUP} of that kind)")
    chunk = (int(group.attrs["chunk_col"]), int(group.attrs["chunk_row"]))
    box = PixelBox(*(int(v) for v in group.attrs["box"]))
    return StorePlace(chunk, box, info.transform, info.crs_wkt)


def write_dataset(group: h5py.Group, name: str, data: np.ndarray, block: int = 512) -> None:
    """A compressed 2-D dataset in ``block`` px chunks (512: the KEA block size)."""
    chunks = tuple(min(block, max(n, 1)) for n in data.shape)
    ds = group.create_dataset(
        name, data.shape, data.dtype, chunks=chunks, shuffle=True, compression="gzip",
        compression_opts=1,
    )  # fmt: skip
    write_array(ds, data)  # deflated with ISA-L: see ``formats.deflate``


def check_on_grid(
    path: Path, place: StorePlace, grid: TileGrid, crs: str, expected: PixelBox
) -> None:
    """Raise DeepSegError naming ``path`` when the store is not where ``grid`` puts its chunk:
    its chunk differs from its file name's, its box from ``expected`` (grid pixels), or its
    geotransform or CRS from the grid's (``grid.*`` or ``crs`` changed since it was made)."""
    if place.chunk != grid.parse_chunk_id(path.stem):
        why = f"it holds chunk {grid.chunk_id(*place.chunk)}"
    elif place.box != expected:
        why = (
            f"it covers grid pixels {list(place.box)}, this grid puts its chunk at {list(expected)}"
        )
    elif not place.transform.almost_equals(grid.transform(place.box), 1e-6 * grid.resolution):
        why = f"its geotransform {tuple(place.transform)[:6]} is not this grid's"
    elif CRS.from_wkt(place.crs_wkt) != CRS.from_user_input(crs):
        why = f"its CRS is not {crs}"
    else:
        return
    raise DeepSegError(
        f"{path}: made on another grid ({why}); grid.*, crs or inference.scales changed since "
        "it was written: restore them, or write this run to a new output.path (or delete "
        "that folder's tiles/ and predictions/ first)"
    )

"""KEA overview pyramids, and rasters created for block writes that get them on close.

Each overview level is half the size of the one before (``halve``), built from the level
below ``OVERVIEW_STEP_PX`` rows at a time, so memory stays at a few MB whatever the raster's
size. Levels, bands and block sizes follow libkea's layout (see ``kea``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import h5py
import numpy as np

from ..core.progress import progress
from .kea import BLOCK_SIZE, KeaInfo, band_data, create, image_dataset, kea_error, node, read_info

log = logging.getLogger(__name__)
OVERVIEW_STEP_PX = 256  # overview pixels per side computed at once (a few MB of memory)
WRITE_CACHE_BYTES = 64 * 2**20  # HDF5 chunk cache while writing a raster block by block


def overview_count(f: h5py.File, band: int) -> int:
    """How many overviews 1-based ``band`` has (libkea counts the OVERVIEWS group's members)."""
    return len(node(f, f"BAND{band}/OVERVIEWS"))


def _overview(f: h5py.File, band: int, level: int, shape: tuple[int, int]) -> h5py.Dataset:
    """Overview ``level`` (1-based, consecutive) of ``band``, created as libkea lays it out."""
    data, group, name = band_data(f, band), node(f, f"BAND{band}/OVERVIEWS"), f"OVERVIEW{level}"
    if name not in group and level != len(group) + 1:  # libkea counts them: no gaps in names
        raise kea_error(f, f"band {band} has {len(group)} overviews, cannot add level {level}")
    if name not in group:
        image_dataset(group, name, shape, data.dtype, int(data.attrs["BLOCK_SIZE"]))
    elif group[name].shape != tuple(shape):
        raise kea_error(f, f"overview {level} of band {band} is {group[name].shape}, not {shape}")
    return group[name]


def write_overview(f: h5py.File, band: int, level: int, array: np.ndarray) -> None:
    """Write overview ``level`` (1-based, levels consecutive) of ``band`` as libkea lays it out."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise kea_error(f, f"overview needs a 2-D array, got shape {array.shape}")
    _overview(f, band, level, array.shape)[...] = array


Resampling = Literal["average", "nearest"]


def halve(pixels: np.ndarray, resampling: Resampling, nodata: float | None) -> np.ndarray:
    """One pyramid step: output pixel (i, j) from the 2 x 2 cell of rows 2i..2i+1 and columns
    2j..2j+1 (cut at the array's edge; odd sizes round up).

    ``nearest`` takes the cell's top-left pixel (2i, 2j), as GDAL's overviews do. ``average``
    takes the mean of the cell's valid pixels
    (not ``nodata``, not NaN), rounded to the nearest integer for integer types, and ``nodata``
    (0 when unset) where none is valid.
    """
    rows, cols = pixels.shape
    if resampling == "nearest":
        return pixels[::2, ::2].copy()
    valid = ~np.isnan(pixels) if pixels.dtype.kind == "f" else np.ones(pixels.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= pixels != np.asarray(nodata, dtype=pixels.dtype)
    shape = ((rows + 1) // 2, 2, (cols + 1) // 2, 2)
    sums, counts = np.zeros(shape), np.zeros(shape)
    sums.reshape(shape[0] * 2, -1)[:rows, :cols] = np.where(valid, pixels, 0)
    counts.reshape(shape[0] * 2, -1)[:rows, :cols] = valid
    total, count = sums.sum(axis=(1, 3)), counts.sum(axis=(1, 3))
    mean = total / np.maximum(count, 1)
    if pixels.dtype.kind != "f":
        mean = np.floor(mean + 0.5)
    return np.where(count > 0, mean, 0 if nodata is None else nodata).astype(pixels.dtype)


def build_overviews(f: h5py.File, resampling: Resampling) -> int:
    """Add overviews to every band of a raster that has none: each level half the size of the
    one before (see ``halve``), until the largest side fits in one ``BLOCK_SIZE`` block, as
    GDAL's COG driver does. Each level is computed ``OVERVIEW_STEP_PX`` at a time from the
    level before, so memory stays at a few MB whatever the raster's size; progress is logged
    with an ETA. Returns the number of levels."""
    info = read_info(f)
    shapes, (rows, cols) = [], (info.height, info.width)
    while max(rows, cols) > BLOCK_SIZE:
        rows, cols = (rows + 1) // 2, (cols + 1) // 2
        shapes.append((rows, cols))
    for band in range(1, info.count + 1):
        if overview_count(f, band):
            raise kea_error(f, f"band {band} already has overviews")
        levels = [_overview(f, band, level, shape) for level, shape in enumerate(shapes, 1)]
        steps = [
            (k, r) for k, ov in enumerate(levels) for r in range(0, ov.shape[0], OVERVIEW_STEP_PX)
        ]
        what = f"{os.path.basename(f.filename)} band {band}: overview rows"
        for k, row in progress(steps, len(steps), what, log):
            below = band_data(f, band, k)  # level k - 1 of the pyramid, 0 = the image
            _halve_rows(below, levels[k], row, resampling, info.nodata[band - 1])
    return len(shapes)


def _halve_rows(below: h5py.Dataset, out: h5py.Dataset, row: int, resampling, nodata) -> None:
    """Fill ``OVERVIEW_STEP_PX`` rows of ``out`` from ``below``, one square block at a time."""
    step = OVERVIEW_STEP_PX
    rows = slice(2 * row, min(2 * (row + step), below.shape[0]))
    for col in range(0, out.shape[1], step):
        cols = slice(2 * col, min(2 * (col + step), below.shape[1]))
        part = halve(below[rows, cols], resampling, nodata)
        out[row : row + part.shape[0], col : col + part.shape[1]] = part


@contextmanager
def create_raster(
    path: str | os.PathLike, info: KeaInfo, overviews: Resampling | None = None
) -> Iterator[h5py.File]:
    """Create the KEA raster ``path`` and yield it open for ``write_band`` at any offsets.

    On a clean exit the overviews are built (``overviews`` resampling; None = none) and the
    file is closed; on an error it is closed as it is (write it under a temporary name).
    """
    with h5py.File(path, "w", rdcc_nbytes=WRITE_CACHE_BYTES, rdcc_nslots=10007) as f:
        create(f, info)
        yield f
        if overviews is not None:
            build_overviews(f, overviews)

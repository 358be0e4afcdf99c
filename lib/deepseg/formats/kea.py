"""KEA rasters (kealib's HDF5 layout, format version 1.1) read and written with h5py only.

Layout: ``shared/data/kea/KEA_LAYOUT.md`` beside the repo. Files are written the way
libkea 2.0 writes them, so GDAL's KEA driver reads them. Pixel offsets and sizes are in pixels
(rows = y, cols = x); the transform and the top-left corner are in CRS units. Bands count from 1.
Overview pyramids, and rasters written block by block that get them on close: ``kea_pyramid``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import h5py
import numpy as np
from affine import Affine

from .deflate import write_array
from .kea_layout import (  # noqa: F401 - re-exported: ``kea`` is the module callers use
    BAND_REQUIRED,
    BLOCK_SIZE,
    CODE_DTYPES,
    DTYPE_CODES,
    FILETYPE,
    GENERATOR,
    RAT_CHUNK_ROWS,
    READABLE_VERSIONS,
    VERSION,
    KeaError,
    KeaInfo,
    create,
    image_dataset,
    kea_error,
)

log = logging.getLogger(__name__)


def node(f: h5py.File, path: str) -> h5py.HLObject:
    obj = f.get(path)
    if obj is None:
        raise kea_error(f, f"required KEA object /{path} is missing")
    return obj


def _values(f: h5py.File, path: str, n: int) -> np.ndarray:
    ds = node(f, path)
    if not isinstance(ds, h5py.Dataset) or ds.size != n:
        raise kea_error(f, f"/{path} must be a dataset of {n} value(s)")
    return ds[()].reshape(n)


def _text(f: h5py.File, path: str) -> str:
    value = _values(f, path, 1)[0]
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _band_dtype(f: h5py.File, band: int) -> np.dtype:
    for name in BAND_REQUIRED:
        node(f, f"BAND{band}/{name}")
    code = int(_values(f, f"BAND{band}/DATATYPE", 1)[0])
    if code not in CODE_DTYPES:
        raise kea_error(f, f"/BAND{band}/DATATYPE {code} is not a known KEA data type")
    if "BLOCK_SIZE" not in f[f"BAND{band}/DATA"].attrs:
        raise kea_error(f, f"required attribute /BAND{band}/DATA@BLOCK_SIZE is missing")
    return CODE_DTYPES[code]


def _nodata(f: h5py.File, band: int) -> float | None:
    ds = f.get(f"BAND{band}/NO_DATA_VAL")
    if ds is None or int(ds.attrs.get("NO_DATA_DEFINED", 0)) != 1:
        return None
    return _values(f, f"BAND{band}/NO_DATA_VAL", 1)[0].item()


def read_info(f: h5py.File) -> KeaInfo:
    """Read and check the header of an open KEA file (sizes in pixels, transform in CRS units)."""
    if (filetype := _text(f, "HEADER/FILETYPE")) != FILETYPE:
        raise kea_error(f, f"/HEADER/FILETYPE is {filetype!r}, not 'KEA'")
    if (version := _text(f, "HEADER/VERSION")) not in READABLE_VERSIONS:
        raise kea_error(
            f, f"KEA version {version!r} is not supported ({', '.join(READABLE_VERSIONS)})"
        )
    count = int(_values(f, "HEADER/NUMBANDS", 1)[0])
    (tl_x, tl_y), (res_x, res_y) = _values(f, "HEADER/TL", 2), _values(f, "HEADER/RES", 2)
    rot = _values(f, "HEADER/ROT", 2)
    if rot.any():
        raise kea_error(f, f"rotated rasters are not supported (/HEADER/ROT = {rot.tolist()})")
    width, height = (int(v) for v in _values(f, "HEADER/SIZE", 2))
    bands = range(1, count + 1)
    dtypes = {_band_dtype(f, b) for b in bands}
    if count < 1 or len(dtypes) != 1:
        raise kea_error(
            f, f"need bands of one data type, found {count} of {sorted(map(str, dtypes))}"
        )
    if any(f[f"BAND{b}/DATA"].shape != (height, width) for b in bands):
        raise kea_error(
            f, f"band data shapes differ from /HEADER/SIZE ({height} rows x {width} cols)"
        )
    usage = [f.get(f"BAND{b}/LAYER_USAGE") for b in bands]  # optional: missing means generic
    return KeaInfo(
        width, height, count, dtypes.pop(),
        Affine(float(res_x), 0.0, float(tl_x), 0.0, float(res_y), float(tl_y)),
        crs_wkt=_text(f, "HEADER/WKT"),
        nodata=tuple(_nodata(f, b) for b in bands),
        descriptions=tuple(_text(f, f"BAND{b}/DESCRIPTION") for b in bands),
        layer_usage=tuple(0 if u is None else int(u[()].reshape(-1)[0]) for u in usage),
        block_size=int(f["BAND1/DATA"].attrs["BLOCK_SIZE"]),
    )  # fmt: skip


def band_data(f: h5py.File, band: int, level: int = 0) -> h5py.Dataset:
    """The pixels of 1-based ``band``: level 0 = BANDn/DATA, k >= 1 = overview k."""
    path = f"BAND{band}/DATA" if level == 0 else f"BAND{band}/OVERVIEWS/OVERVIEW{level}"
    ds = f.get(path)
    if not isinstance(ds, h5py.Dataset):
        raise kea_error(f, f"band {band}{f' overview {level}' if level else ''} does not exist")
    return ds


def _check_window(f: h5py.File, shape, row_off: int, col_off: int, height: int, width: int):
    rows, cols = shape
    if min(height, width) < 0 or not (
        0 <= row_off <= rows - height and 0 <= col_off <= cols - width
    ):
        where = f"rows {row_off}+{height}, cols {col_off}+{width}"
        raise kea_error(f, f"window {where} is outside the {rows} x {cols} raster")
    return np.s_[row_off : row_off + height, col_off : col_off + width]


def write_band(
    f: h5py.File, band: int, array: np.ndarray, row_off: int = 0, col_off: int = 0
) -> None:
    """Write a 2-D (rows, cols) array into 1-based ``band`` at pixel offset (row_off, col_off).

    The array is cast to the band's type only where numpy calls that a same-kind cast.
    """
    ds, array = band_data(f, band), np.asarray(array)
    if array.ndim != 2:
        raise kea_error(f, f"write_band needs a 2-D array, got shape {array.shape}")
    if not np.can_cast(array.dtype, ds.dtype, casting="same_kind"):
        raise kea_error(f, f"cannot write {array.dtype} pixels into {ds.dtype} band {band}")
    _check_window(f, ds.shape, row_off, col_off, *array.shape)
    write_array(ds, array, row_off, col_off)  # deflated with ISA-L: see ``deflate``


def read_window(
    f: h5py.File,
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    bands: Sequence[int] | None = None,
    level: int = 0,
) -> np.ndarray:
    """Read a (len(bands), height, width) pixel window; ``bands`` are 1-based, default all.

    ``level`` 0 reads the image, ``level`` k >= 1 its overview k (offsets in that overview's
    pixels).
    """
    if bands is None:
        bands = range(1, int(_values(f, "HEADER/NUMBANDS", 1)[0]) + 1)
    sets = [band_data(f, b, level) for b in bands]
    if not sets:
        raise kea_error(f, "read_window needs at least one band")
    windows = [_check_window(f, ds.shape, row_off, col_off, height, width) for ds in sets]
    out = np.empty((len(sets), height, width), dtype=sets[0].dtype.newbyteorder("="))
    try:
        for i, (ds, window) in enumerate(zip(sets, windows, strict=True)):
            ds.read_direct(out, window, np.s_[i])  # into place: no temporary copy
    except OSError as exc:
        raise kea_error(f, f"cannot read pixels ({exc})") from None
    return out


def read_band(f: h5py.File, band: int) -> np.ndarray:
    """Read the whole 1-based ``band`` as a (rows, cols) array."""
    rows, cols = band_data(f, band).shape
    return read_window(f, 0, 0, rows, cols, [band])[0]


def read_mask_window(
    f: h5py.File, row_off: int, col_off: int, height: int, width: int, bands: Sequence[int]
) -> np.ndarray | None:
    """The bands' optional GDAL masks (``BANDn/MASK``, 0 = invalid) over a window, as a
    (len(bands), height, width) boolean array (True = valid; a band without a mask is all
    valid), or None when none of ``bands`` has a mask."""
    masks = [f.get(f"BAND{b}/MASK") for b in bands]
    if all(m is None for m in masks):
        return None
    out = np.ones((len(masks), height, width), dtype=bool)
    for i, mask in enumerate(masks):
        if mask is not None:
            out[i] = mask[_check_window(f, mask.shape, row_off, col_off, height, width)] != 0
    return out


@contextmanager
def open_kea(path: str | os.PathLike) -> Iterator[tuple[h5py.File, KeaInfo]]:
    """Open a KEA file read-only and yield it with its checked header."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KeaError(f"{os.fspath(path)}: not a readable HDF5/KEA file ({msg})") from None
    with f:
        yield f, read_info(f)

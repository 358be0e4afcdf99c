"""KEA rasters (kealib's HDF5 layout, format version 1.1) read and written with h5py only.

Layout: ``shared/data/kea/KEA_LAYOUT.md`` beside the repo. Files are written the way
libkea 2.0 writes them, so GDAL's KEA driver reads them. Pixel offsets and sizes are in pixels
(rows = y, cols = x); the transform and the top-left corner are in CRS units. Bands count from 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import h5py
import numpy as np
from affine import Affine

from deepseg.errors import DeepSegError
from deepseg.progress import progress

log = logging.getLogger(__name__)

FILETYPE = "KEA"
VERSION = "1.1"
READABLE_VERSIONS = ("1.0", "1.1", "2.0")
GENERATOR = "DeepSeg"
RAT_CHUNK_ROWS = 10000
BLOCK_SIZE = 512  # libkea's default chunk side, pixels; also where overview pyramids stop
WRITE_CACHE_BYTES = 64 * 2**20  # HDF5 chunk cache while writing a raster block by block
OVERVIEW_STEP_PX = 256  # overview pixels per side computed at once (a few MB of memory)
DTYPE_CODES = {n: i for i, n in enumerate("i1 i2 i4 i8 u1 u2 u4 u8 f4 f8".split(), 1)}
CODE_DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
BAND_REQUIRED = "DATA DATATYPE DESCRIPTION LAYER_TYPE METADATA OVERVIEWS ATT/HEADER/SIZE".split()
_VLEN_ASCII = h5py.string_dtype("ascii")
_IMAGE_OPTS = dict(shuffle=True, compression="gzip", compression_opts=1, fillvalue=0)


class KeaError(DeepSegError):
    """Not a usable KEA raster, or a request it cannot serve; one line naming the file."""


@dataclass(frozen=True)
class KeaInfo:
    """Georeferenced raster description as stored in a KEA file.

    ``transform`` maps (col, row) pixel corners to CRS units; its translation is the outer
    corner of pixel (0, 0). ``block_size`` is in pixels: the written chunk is
    ``min(block_size, height, width)``, and ``read_info`` returns that effective value.
    ``read_info`` always returns one ``layer_usage`` entry per band.
    """

    width: int
    height: int
    count: int
    dtype: np.dtype
    transform: Affine
    crs_wkt: str
    nodata: tuple[float | None, ...]
    descriptions: tuple[str, ...]
    layer_usage: tuple[int, ...] = ()
    block_size: int = BLOCK_SIZE

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once so equal rasters compare equal
        set_(self, "dtype", np.dtype(self.dtype))
        set_(self, "nodata", tuple(self.nodata))
        set_(self, "descriptions", tuple(self.descriptions))
        set_(self, "layer_usage", tuple(self.layer_usage))


def _fail(f: h5py.File, what: str) -> KeaError:
    return KeaError(f"{f.filename}: {what}".replace("\n", " "))


def _put(group: h5py.Group, name: str, values, dtype) -> h5py.Dataset:
    return group.create_dataset(name, data=np.asarray(values, dtype=dtype))


def _put_str(group: h5py.Group, name: str, value: str) -> None:
    # libkea stores std::string bytes as ASCII vlen; UTF-8 bytes pass through unchanged.
    group.create_dataset(name, shape=(1,), dtype=_VLEN_ASCII, data=[value.encode()])


def _fixed_str_attr(obj: h5py.HLObject, name: str, value: str) -> None:
    """Scalar fixed-length NULLTERM ASCII attribute, as HighFive writes (h5py's own is NULLPAD)."""
    raw = value.encode("ascii")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    attr = h5py.h5a.create(obj.id, name.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(np.array(raw, dtype=f"S{len(raw) + 1}"), mtype=tid)


def _image(group: h5py.Group, name: str, shape: tuple[int, int], dtype: np.dtype, block: int):
    """Chunked (B, B) image dataset with shuffle + deflate 1, fill 0 and libkea's attributes."""
    b = max(1, min(block, *shape))
    ds = group.create_dataset(name, shape, dtype.newbyteorder("<"), chunks=(b, b), **_IMAGE_OPTS)
    _fixed_str_attr(ds, "CLASS", "IMAGE")
    _fixed_str_attr(ds, "IMAGE_VERSION", "1.2")
    ds.attrs.create("BLOCK_SIZE", b, dtype="<u2")
    return ds


def _check_nodata(f: h5py.File, value: float, dtype: np.dtype) -> np.ndarray:
    """NO_DATA_VAL in the band dtype: integers must fit exactly, floats may round (0.1 in f4)."""
    with np.errstate(invalid="ignore", over="ignore"):
        stored = np.array([value]).astype(dtype)
    exact = stored[0].item() == value or (np.isnan(value) and np.isnan(stored[0]))
    if not exact and not (dtype.kind == "f" and np.isfinite(stored[0]) == np.isfinite(value)):
        raise _fail(f, f"nodata {value!r} cannot be stored as {dtype}")
    return stored


def create(f: h5py.File, info: KeaInfo) -> None:
    """Write the KEA header and empty band datasets (fill 0) into an open, empty, writable file."""
    if len(f):
        raise _fail(f, "create() needs an empty HDF5 file")
    if min(info.width, info.height, info.count) < 1:
        raise _fail(f, f"bad raster size {info.count} x {info.height} x {info.width}")
    usage = info.layer_usage or (0,) * info.count
    if not len(info.nodata) == len(info.descriptions) == len(usage) == info.count:
        raise _fail(f, f"nodata, descriptions and layer_usage need {info.count} entries each")
    code, t = DTYPE_CODES.get(f"{info.dtype.kind}{info.dtype.itemsize}"), info.transform
    if code is None:
        raise _fail(f, f"data type {info.dtype} is not supported by KEA")
    head = f.create_group("HEADER")
    _put_str(head, "FILETYPE", FILETYPE)
    _put_str(head, "VERSION", VERSION)
    _put_str(head, "GENERATOR", GENERATOR)
    _put(head, "NUMBANDS", [info.count], "<u2")
    _put(head, "TL", [t.c, t.f], "<f8")
    _put(head, "RES", [t.a, t.e], "<f8")
    _put(head, "ROT", [t.b, t.d], "<f8")
    _put(head, "SIZE", [info.width, info.height], "<u8")
    _put_str(head, "WKT", info.crs_wkt)
    f.create_group("METADATA")
    f.create_group("GCPS")
    for i in range(info.count):
        band = f.create_group(f"BAND{i + 1}")
        _image(band, "DATA", (info.height, info.width), info.dtype, info.block_size)
        _put(band, "DATATYPE", [code], "<u2")
        _put_str(band, "DESCRIPTION", info.descriptions[i])
        _put(band, "LAYER_TYPE", [0], "u1")
        _put(band, "LAYER_USAGE", [usage[i]], "u1")
        if info.nodata[i] is not None:  # libkea writes NO_DATA_VAL only once nodata is set
            value = _check_nodata(f, info.nodata[i], info.dtype)
            ds = _put(band, "NO_DATA_VAL", value, info.dtype.newbyteorder("<"))
            ds.attrs.create("NO_DATA_DEFINED", 1, dtype="i1")
        band.create_group("METADATA")
        band.create_group("OVERVIEWS")
        band.create_group("ATT/DATA")
        band.create_group("ATT/NEIGHBOURS")
        _put(band, "ATT/HEADER/SIZE", [0, 0, 0, 0, 0], "<u8")
        _put(band, "ATT/HEADER/CHUNKSIZE", [RAT_CHUNK_ROWS], "<u8")


def _obj(f: h5py.File, path: str) -> h5py.HLObject:
    obj = f.get(path)
    if obj is None:
        raise _fail(f, f"required KEA object /{path} is missing")
    return obj


def _values(f: h5py.File, path: str, n: int) -> np.ndarray:
    ds = _obj(f, path)
    if not isinstance(ds, h5py.Dataset) or ds.size != n:
        raise _fail(f, f"/{path} must be a dataset of {n} value(s)")
    return ds[()].reshape(n)


def _text(f: h5py.File, path: str) -> str:
    value = _values(f, path, 1)[0]
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _band_dtype(f: h5py.File, band: int) -> np.dtype:
    for name in BAND_REQUIRED:
        _obj(f, f"BAND{band}/{name}")
    code = int(_values(f, f"BAND{band}/DATATYPE", 1)[0])
    if code not in CODE_DTYPES:
        raise _fail(f, f"/BAND{band}/DATATYPE {code} is not a known KEA data type")
    if "BLOCK_SIZE" not in f[f"BAND{band}/DATA"].attrs:
        raise _fail(f, f"required attribute /BAND{band}/DATA@BLOCK_SIZE is missing")
    return CODE_DTYPES[code]


def _nodata(f: h5py.File, band: int) -> float | None:
    ds = f.get(f"BAND{band}/NO_DATA_VAL")
    if ds is None or int(ds.attrs.get("NO_DATA_DEFINED", 0)) != 1:
        return None
    return _values(f, f"BAND{band}/NO_DATA_VAL", 1)[0].item()


def read_info(f: h5py.File) -> KeaInfo:
    """Read and check the header of an open KEA file (sizes in pixels, transform in CRS units)."""
    if (filetype := _text(f, "HEADER/FILETYPE")) != FILETYPE:
        raise _fail(f, f"/HEADER/FILETYPE is {filetype!r}, not 'KEA'")
    if (version := _text(f, "HEADER/VERSION")) not in READABLE_VERSIONS:
        raise _fail(f, f"KEA version {version!r} is not supported ({', '.join(READABLE_VERSIONS)})")
    count = int(_values(f, "HEADER/NUMBANDS", 1)[0])
    (tl_x, tl_y), (res_x, res_y) = _values(f, "HEADER/TL", 2), _values(f, "HEADER/RES", 2)
    rot = _values(f, "HEADER/ROT", 2)
    if rot.any():
        raise _fail(f, f"rotated rasters are not supported (/HEADER/ROT = {rot.tolist()})")
    width, height = (int(v) for v in _values(f, "HEADER/SIZE", 2))
    bands = range(1, count + 1)
    dtypes = {_band_dtype(f, b) for b in bands}
    if count < 1 or len(dtypes) != 1:
        raise _fail(f, f"need bands of one data type, found {count} of {sorted(map(str, dtypes))}")
    if any(f[f"BAND{b}/DATA"].shape != (height, width) for b in bands):
        raise _fail(f, f"band data shapes differ from /HEADER/SIZE ({height} rows x {width} cols)")
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


def _data(f: h5py.File, band: int, level: int = 0) -> h5py.Dataset:
    """The pixels of 1-based ``band``: level 0 = BANDn/DATA, k >= 1 = overview k."""
    path = f"BAND{band}/DATA" if level == 0 else f"BAND{band}/OVERVIEWS/OVERVIEW{level}"
    ds = f.get(path)
    if not isinstance(ds, h5py.Dataset):
        raise _fail(f, f"band {band}{f' overview {level}' if level else ''} does not exist")
    return ds


def _check_window(f: h5py.File, shape, row_off: int, col_off: int, height: int, width: int):
    rows, cols = shape
    if min(height, width) < 0 or not (
        0 <= row_off <= rows - height and 0 <= col_off <= cols - width
    ):
        where = f"rows {row_off}+{height}, cols {col_off}+{width}"
        raise _fail(f, f"window {where} is outside the {rows} x {cols} raster")
    return np.s_[row_off : row_off + height, col_off : col_off + width]


def write_band(
    f: h5py.File, band: int, array: np.ndarray, row_off: int = 0, col_off: int = 0
) -> None:
    """Write a 2-D (rows, cols) array into 1-based ``band`` at pixel offset (row_off, col_off).

    The array is cast to the band's type only where numpy calls that a same-kind cast.
    """
    ds, array = _data(f, band), np.asarray(array)
    if array.ndim != 2:
        raise _fail(f, f"write_band needs a 2-D array, got shape {array.shape}")
    if not np.can_cast(array.dtype, ds.dtype, casting="same_kind"):
        raise _fail(f, f"cannot write {array.dtype} pixels into {ds.dtype} band {band}")
    ds[_check_window(f, ds.shape, row_off, col_off, *array.shape)] = array


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
    sets = [_data(f, b, level) for b in bands]
    if not sets:
        raise _fail(f, "read_window needs at least one band")
    windows = [_check_window(f, ds.shape, row_off, col_off, height, width) for ds in sets]
    out = np.empty((len(sets), height, width), dtype=sets[0].dtype.newbyteorder("="))
    try:
        for i, (ds, window) in enumerate(zip(sets, windows, strict=True)):
            out[i] = ds[window]
    except OSError as exc:
        raise _fail(f, f"cannot read pixels ({exc})") from None
    return out


def read_band(f: h5py.File, band: int) -> np.ndarray:
    """Read the whole 1-based ``band`` as a (rows, cols) array."""
    rows, cols = _data(f, band).shape
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


def overview_count(f: h5py.File, band: int) -> int:
    """How many overviews 1-based ``band`` has (libkea counts the OVERVIEWS group's members)."""
    return len(_obj(f, f"BAND{band}/OVERVIEWS"))


def _overview(f: h5py.File, band: int, level: int, shape: tuple[int, int]) -> h5py.Dataset:
    """Overview ``level`` (1-based, consecutive) of ``band``, created as libkea lays it out."""
    data, group, name = _data(f, band), _obj(f, f"BAND{band}/OVERVIEWS"), f"OVERVIEW{level}"
    if name not in group and level != len(group) + 1:  # libkea counts them: no gaps in names
        raise _fail(f, f"band {band} has {len(group)} overviews, cannot add level {level}")
    if name not in group:
        _image(group, name, shape, data.dtype, int(data.attrs["BLOCK_SIZE"]))
    elif group[name].shape != tuple(shape):
        raise _fail(f, f"overview {level} of band {band} is {group[name].shape}, not {shape}")
    return group[name]


def write_overview(f: h5py.File, band: int, level: int, array: np.ndarray) -> None:
    """Write overview ``level`` (1-based, levels consecutive) of ``band`` as libkea lays it out."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise _fail(f, f"overview needs a 2-D array, got shape {array.shape}")
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
            raise _fail(f, f"band {band} already has overviews")
        levels = [_overview(f, band, level, shape) for level, shape in enumerate(shapes, 1)]
        steps = [
            (k, r) for k, ov in enumerate(levels) for r in range(0, ov.shape[0], OVERVIEW_STEP_PX)
        ]
        what = f"{os.path.basename(f.filename)} band {band}: overview rows"
        for k, row in progress(steps, len(steps), what, log):
            below = _data(f, band, k)  # level k - 1 of the pyramid, 0 = the image
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

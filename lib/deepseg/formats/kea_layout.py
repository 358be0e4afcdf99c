"""The KEA file layout: its constants, the raster description ``KeaInfo``, and ``create``,
which writes the header and empty bands the way libkea 2.0 does (see ``kea``)."""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from affine import Affine

from ..core.errors import DeepSegError

FILETYPE = "KEA"
VERSION = "1.1"
READABLE_VERSIONS = ("1.0", "1.1", "2.0")
GENERATOR = "DeepSeg"
RAT_CHUNK_ROWS = 10000
BLOCK_SIZE = 512  # libkea's default chunk side, pixels; also where overview pyramids stop
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


def kea_error(f: h5py.File, what: str) -> KeaError:
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


def image_dataset(
    group: h5py.Group, name: str, shape: tuple[int, int], dtype: np.dtype, block: int
):
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
        raise kea_error(f, f"nodata {value!r} cannot be stored as {dtype}")
    return stored


def create(f: h5py.File, info: KeaInfo) -> None:
    """Write the KEA header and empty band datasets (fill 0) into an open, empty, writable file."""
    if len(f):
        raise kea_error(f, "create() needs an empty HDF5 file")
    if min(info.width, info.height, info.count) < 1:
        raise kea_error(f, f"bad raster size {info.count} x {info.height} x {info.width}")
    usage = info.layer_usage or (0,) * info.count
    if not len(info.nodata) == len(info.descriptions) == len(usage) == info.count:
        raise kea_error(f, f"nodata, descriptions and layer_usage need {info.count} entries each")
    code, t = DTYPE_CODES.get(f"{info.dtype.kind}{info.dtype.itemsize}"), info.transform
    if code is None:
        raise kea_error(f, f"data type {info.dtype} is not supported by KEA")
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
        image_dataset(band, "DATA", (info.height, info.width), info.dtype, info.block_size)
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

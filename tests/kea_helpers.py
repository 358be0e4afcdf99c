"""What the KEA tests share: EPSG:3413's WKT, HDF5 type signatures, a small raster header
and the libkea-written fixtures in ../shared/data/kea with the pixels they hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
from affine import Affine

from conftest import shared_file
from deepseg.formats import kea

WKT_3413 = (
    'PROJCS["WGS 84 / NSIDC Sea Ice Polar Stereographic North",GEOGCS["WGS 84",'
    'DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]],'
    'PROJECTION["Polar_Stereographic"],PARAMETER["latitude_of_origin",70],'
    'PARAMETER["central_meridian",-45],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    'AUTHORITY["EPSG","3413"]]'
)


def hdf5_type(tid) -> tuple:
    if tid.get_class() == h5py.h5t.STRING:
        size = "vlen" if tid.is_variable_str() else tid.get_size()
        return ("string", size, tid.get_strpad(), tid.get_cset())
    return (tid.get_class(), tid.get_size(), tid.get_order())


def small_info(**changes) -> kea.KeaInfo:
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0)
    base = kea.KeaInfo(53, 37, 2, np.dtype("int16"), transform, "", (None, -9999), ("a", "b"))
    return dataclasses.replace(base, **changes)


def fixture_path(name: str) -> Path:
    """A libkea-written fixture from ../shared/data/kea, or skip the test with the reason."""
    return shared_file(f"kea/{name}")


def rgb_expected() -> np.ndarray:
    """The pixels rgb_3413.kea was written with (bands, rows, cols)."""
    r, c = np.mgrid[0:600, 0:800]
    rgb = np.stack([((r * 7 + c * 3 + b * 50) % 251 + 1) for b in range(3)]).astype(np.uint8)
    rgb[:, :, 780:] = 0
    return rgb


def prob_expected() -> np.ndarray:
    """The pixels of the probability fixture, nodata -1."""
    r, c = np.mgrid[0:300, 0:400]
    prob = ((r * 400 + c) / 120000.0).astype(np.float32)
    prob[100:150, 200:300] = -1.0
    return prob

"""KEA reader/writer: the libkea-written fixtures, round trips, layout parity and broken files."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from affine import Affine

from deepseg.formats import kea
from kea_helpers import WKT_3413, fixture_path, hdf5_type, prob_expected, rgb_expected, small_info

RGB_SHA256 = (
    "dd1dfd079020ed2336e6751e6cf9a6fc3dcec96b69d11839519a4436ff3d0ef2",
    "4996e1e28612b6b1cea5f50fbcdd5234f9d50de5a39d15a986afbb60f4a514a5",
    "466c9bfb740db10af7abfeef654c4e174fcd038dfbb6270bb8aefd8ddf138a23",
)
PROB_SHA256 = "bf2383558b22db51938424716064e0986b7a83be34e7620de6a22891a6a4abd1"


def test_rgb_fixture_header():
    with kea.open_kea(fixture_path("rgb_3413.kea")) as (f, info):
        assert (info.width, info.height, info.count, info.dtype) == (800, 600, 3, np.uint8)
        assert info.transform == Affine(3.0, 0.0, -2000100.0, 0.0, -3.0, 1000100.0)
        assert info.transform @ (800, 600) == (-1997700.0, 998300.0)
        assert info.crs_wkt == WKT_3413 and len(info.crs_wkt) == 543
        assert info.nodata == (0, 0, 0)
        assert info.descriptions == ("red", "green", "blue")
        assert info.layer_usage == (3, 4, 5)
        assert info.block_size == 512
        assert f["HEADER/SIZE"][()].tolist() == [800, 600]
        assert f["HEADER/RES"][()].tolist() == [3.0, -3.0]
        for b in (1, 2, 3):
            assert f[f"BAND{b}/DATATYPE"][()].tolist() == [5]
            assert f[f"BAND{b}/DATA"].dtype == np.dtype("<u1")
            assert f[f"BAND{b}/DATA"].chunks == (512, 512)
            assert f[f"BAND{b}/NO_DATA_VAL"].dtype == np.dtype("<u1")


def test_prob_fixture_header():
    import pyproj

    with kea.open_kea(fixture_path("prob_float32.kea")) as (f, info):
        assert (info.width, info.height, info.count, info.dtype) == (400, 300, 1, np.float32)
        assert info.transform == Affine(6.0, 0.0, -2000100.0, 0.0, -6.0, 1000100.0)
        assert info.transform @ (400, 300) == (-1997700.0, 998300.0)
        assert info.crs_wkt == WKT_3413
        assert pyproj.CRS.from_wkt(info.crs_wkt).to_epsg() == 3413
        assert info.nodata == (-1.0,)
        assert info.descriptions == ("probability",)
        assert info.layer_usage == (0,)
        assert info.block_size == 300
        assert f["HEADER/SIZE"][()].tolist() == [400, 300]
        assert f["HEADER/RES"][()].tolist() == [6.0, -6.0]
        assert f["BAND1/DATATYPE"][()].tolist() == [9]
        assert f["BAND1/DATA"].dtype == np.dtype("<f4") and f["BAND1/DATA"].chunks == (300, 300)
        assert f["BAND1/NO_DATA_VAL"].dtype == np.dtype("<f4")


@pytest.mark.parametrize("name", ["rgb_3413.kea", "prob_float32.kea"])
def test_fixture_common_header_objects(name):
    with h5py.File(fixture_path(name), "r") as f:
        assert [f[f"HEADER/{k}"][0] for k in ("FILETYPE", "VERSION", "GENERATOR")] == [
            b"KEA",
            b"1.1",
            b"LibKEA",
        ]
        assert f["HEADER/TL"][()].tolist() == [-2000100.0, 1000100.0]
        assert f["HEADER/ROT"][()].tolist() == [0.0, 0.0]
        assert all(f[f"HEADER/{k}"].dtype == np.dtype("<f8") for k in ("TL", "RES", "ROT"))
        assert len(f["METADATA"]) == len(f["GCPS"]) == 0
        for b in range(1, int(f["HEADER/NUMBANDS"][0]) + 1):
            band = f[f"BAND{b}"]
            assert band["LAYER_TYPE"][()].tolist() == [0]
            assert band["ATT/HEADER/SIZE"][()].tolist() == [0, 0, 0, 0, 0]
            assert len(band["OVERVIEWS"]) == len(band["METADATA"]) == 0
            assert band["NO_DATA_VAL"].attrs["NO_DATA_DEFINED"] == 1
            data = band["DATA"]
            assert (data.compression, data.compression_opts, data.shuffle) == ("gzip", 1, True)
            assert data.fillvalue == 0


def test_rgb_fixture_pixels():
    with kea.open_kea(fixture_path("rgb_3413.kea")) as (f, _):
        bands = [kea.read_band(f, b) for b in (1, 2, 3)]
    assert np.array_equal(np.stack(bands), rgb_expected())
    assert tuple(hashlib.sha256(a.tobytes()).hexdigest() for a in bands) == RGB_SHA256
    samples = {(0, 0): (1, 51, 101), (0, 1): (4, 54, 104), (1, 0): (8, 58, 108)}
    samples |= {(300, 400): (38, 88, 138), (599, 779): (5, 55, 105), (599, 780): (0, 0, 0)}
    for (r, c), values in samples.items():
        assert tuple(int(a[r, c]) for a in bands) == values
    stats = [
        (58969093, 126.00233547008547, 72.4371550263141),
        (58984176, 126.0345641025641, 72.45364490502648),
        (58974159, 126.01316025641026, 72.47137908312054),
    ]
    for a, (total, mean, std) in zip(bands, stats, strict=True):
        valid = a[a != 0].astype(np.float64)
        assert (valid.size, a.size - valid.size, valid.min(), valid.max()) == (
            468000,
            12000,
            1,
            251,
        )
        assert int(a.sum(dtype=np.int64)) == total
        assert valid.mean() == pytest.approx(mean, rel=1e-12)
        assert valid.std() == pytest.approx(std, rel=1e-12)


def test_prob_fixture_pixels():
    with kea.open_kea(fixture_path("prob_float32.kea")) as (f, _):
        a = kea.read_band(f, 1)
    assert a.dtype == np.float32 and np.array_equal(a, prob_expected())
    assert hashlib.sha256(a.tobytes()).hexdigest() == PROB_SHA256
    samples = {(0, 0): 0.0, (0, 1): 8.333333425980527e-06, (99, 199): 0.33165833353996277}
    samples |= {(120, 250): -1.0, (150, 300): 0.5024999976158142, (299, 399): 0.9999916553497314}
    for (r, c), value in samples.items():
        assert float(a[r, c]) == value
    valid = a[a != -1.0].astype(np.float64)
    assert (valid.size, a.size - valid.size) == (115000, 5000)
    assert (valid.min(), a[0, 0]) == (0.0, 0.0)
    assert valid.max() == float(a[299, 399]) == float(np.float32(119999 / 120000))
    assert valid.mean() == pytest.approx(0.503600905797044, rel=1e-9)
    assert valid.std() == pytest.approx(0.294183613095571, rel=1e-9)


def test_read_window_returns_exact_subarrays():
    rgb = rgb_expected()
    with kea.open_kea(fixture_path("rgb_3413.kea")) as (f, _):
        for r, c, h, w in [(0, 0, 1, 1), (0, 0, 600, 800), (511, 511, 2, 2), (37, 500, 300, 300)]:
            assert np.array_equal(kea.read_window(f, r, c, h, w), rgb[:, r : r + h, c : c + w])
        window = kea.read_window(f, 590, 770, 10, 30, bands=[3, 1])
        assert window.shape == (2, 10, 30) and window.dtype == np.uint8
        assert np.array_equal(window, rgb[[2, 0], 590:600, 770:800])
        for bad in [(599, 0, 2, 1), (0, 799, 1, 2), (-1, 0, 1, 1), (0, 0, -1, 1)]:
            with pytest.raises(kea.KeaError, match="outside"):
                kea.read_window(f, *bad)
        with pytest.raises(kea.KeaError, match="band 4"):
            kea.read_window(f, 0, 0, 1, 1, bands=[4])


def _tree(path: Path) -> dict:
    """Every object with its HDF5 type, storage settings, attributes and (small) values."""
    tree = {}

    def visit(name, obj):
        ids = {k: obj.attrs.get_id(k) for k in obj.attrs}
        attrs = {k: (hdf5_type(a.get_type()), a.shape) for k, a in ids.items()}
        node = {"kind": type(obj).__name__, "attrs": attrs}
        node["attr_values"] = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
        node["attr_values"].pop("BLOCK_SIZE", None)  # depends on the raster size
        if isinstance(obj, h5py.Dataset):
            plist = obj.id.get_create_plist()
            filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
            node |= {"type": hdf5_type(obj.id.get_type()), "layout": plist.get_layout()}
            node |= {"filters": filters, "fill": (plist.get_fill_time(), plist.get_alloc_time())}
            node |= {"fill_defined": plist.fill_value_defined(), "fillvalue": obj.fillvalue}
            if not name.endswith("DATA") and name not in ("HEADER/SIZE", "HEADER/GENERATOR"):
                node |= {"shape": obj.shape, "value": obj[()].tolist()}
        tree[name] = node

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        tree["/superblock"] = f.id.get_create_plist().get_version()
    return tree


def _write_tiles(f: h5py.File, pixels: np.ndarray, tile: tuple[int, int] = (256, 300)) -> None:
    for b, band in enumerate(pixels, 1):
        for r in range(0, band.shape[0], tile[0]):
            for c in range(0, band.shape[1], tile[1]):
                kea.write_band(f, b, band[r : r + tile[0], c : c + tile[1]], r, c)


@pytest.mark.parametrize("name", ["rgb_3413.kea", "prob_float32.kea"])
@pytest.mark.parametrize("rows,cols", [(37, 53), (700, 600)])
def test_round_trip_matches_libkea_layout(tmp_path, name, rows, cols):
    reference = fixture_path(name)
    with kea.open_kea(reference) as (_, ref_info):
        info = dataclasses.replace(ref_info, width=cols, height=rows, block_size=512)
    rng = np.random.default_rng(rows)
    pixels = (rng.random((info.count, rows, cols)) * 250).astype(info.dtype)
    path = tmp_path / "out.kea"
    with h5py.File(path, "w") as f:
        kea.create(f, info)
        _write_tiles(f, pixels)
    block = min(512, rows, cols)
    with kea.open_kea(path) as (f, got):
        assert got == dataclasses.replace(info, block_size=block)
        assert np.array_equal(kea.read_window(f, 0, 0, rows, cols), pixels)
        assert f["HEADER/GENERATOR"][0] == b"DeepSeg"
        assert f["HEADER/SIZE"][()].tolist() == [cols, rows]
        for b in range(1, info.count + 1):
            data = f[f"BAND{b}/DATA"]
            assert (data.shape, data.chunks) == ((rows, cols), (block, block))
            assert data.attrs["BLOCK_SIZE"] == block
            assert data.attrs["BLOCK_SIZE"].dtype == np.uint16
    assert _tree(path) == _tree(reference)


def test_block_size_override_nodata_unset_and_extra_groups(tmp_path):
    path = tmp_path / "small.kea"
    with h5py.File(path, "w") as f:
        kea.create(f, small_info(width=700, height=600, block_size=256))
        kea.write_band(f, 2, np.full((3, 4), 7, dtype=np.int8), row_off=597, col_off=696)
        f.create_group("DEEPSEG").create_dataset("tiles", data=np.arange(5))
    with kea.open_kea(path) as (f, info):
        assert info == small_info(width=700, height=600, block_size=256, layer_usage=(0, 0))
        assert info.nodata == (None, -9999) and info.crs_wkt == ""
        assert "NO_DATA_VAL" not in f["BAND1"] and f["BAND2/NO_DATA_VAL"].dtype == np.dtype("<i2")
        assert f["BAND1/DATA"].chunks == (256, 256) and f["BAND1/DATA"].attrs["BLOCK_SIZE"] == 256
        assert kea.read_band(f, 2)[597:, 696:].tolist() == [[7] * 4] * 3
        assert not kea.read_band(f, 1).any() and kea.read_band(f, 2)[:597].sum() == 0


def test_float_nan_nodata_and_same_kind_cast(tmp_path):
    path = tmp_path / "nan.kea"
    with h5py.File(path, "w") as f:
        kea.create(f, small_info(dtype=np.float32, nodata=(math.nan, 0.1)))
        kea.write_band(f, 1, np.full((37, 53), 0.25))  # float64 into float32 is allowed
        with pytest.raises(kea.KeaError, match="cannot write"):
            kea.write_band(f, 1, np.zeros((2, 2), dtype=np.complex64))
    with kea.open_kea(path) as (f, info):
        assert math.isnan(info.nodata[0]) and np.all(kea.read_band(f, 1) == 0.25)
        assert info.nodata[1] == float(np.float32(0.1))  # stored in the band dtype


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"dtype": np.complex64}, "not supported"),
        ({"dtype": np.bool_}, "not supported"),
        ({"nodata": (None, 70000)}, "cannot be stored"),
        ({"nodata": (None, -0.5)}, "cannot be stored"),
        ({"dtype": np.float32, "nodata": (None, 1e39)}, "cannot be stored"),
        ({"descriptions": ("a",)}, "2 entries"),
    ],
)
def test_create_rejects_bad_info(tmp_path, changes, match):
    path = tmp_path / "bad.kea"
    with h5py.File(path, "w") as f, pytest.raises(kea.KeaError, match=match) as err:
        kea.create(f, small_info(**changes))
    assert str(path) in str(err.value)


def _break(f: h5py.File, how: str) -> None:
    if how == "no_wkt":
        del f["HEADER/WKT"]
    elif how == "no_overviews":
        del f["BAND2/OVERVIEWS"]
    elif how == "not_kea":
        f["HEADER/FILETYPE"][0] = b"HDF"
    elif how == "version":
        f["HEADER/VERSION"][0] = b"3.0"


@pytest.mark.parametrize(
    "how,match",
    [
        ("random", "not a readable HDF5"),
        ("empty_hdf5", "/HEADER/FILETYPE is missing"),
        ("no_wkt", "/HEADER/WKT is missing"),
        ("no_overviews", "/BAND2/OVERVIEWS is missing"),
        ("not_kea", "FILETYPE is 'HDF'"),
        ("version", "version '3.0'"),
        ("rotated", "rotated"),
    ],
)
def test_broken_files_raise_one_line_naming_the_path(tmp_path, how, match):
    path = tmp_path / f"{how}.kea"
    if how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        with h5py.File(path, "w") as f:
            if how != "empty_hdf5":
                rotated = Affine(10.0, 0.5, 500000.0, 0.0, -10.0, 7000000.0)
                kea.create(f, small_info(transform=rotated) if how == "rotated" else small_info())
                _break(f, how)
    with pytest.raises(kea.KeaError, match=match) as err:
        with kea.open_kea(path):
            pass
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_fixture_copy_missing_wkt_raises(tmp_path):
    path = tmp_path / "prob.kea"
    shutil.copy(fixture_path("prob_float32.kea"), path)
    with h5py.File(path, "r+") as f:
        del f["HEADER/WKT"]
    with pytest.raises(kea.KeaError, match=r"/HEADER/WKT is missing") as err:
        with kea.open_kea(path):
            pass
    assert str(path) in str(err.value)


def test_read_mask_window(tmp_path):
    path = tmp_path / "masked.kea"
    with h5py.File(path, "w") as f:
        kea.create(f, small_info())
        mask = f["BAND2"].create_dataset("MASK", (37, 53), "u1", fillvalue=255)
        mask[10:20, 5:9] = 0
    with kea.open_kea(path) as (f, _):
        masks = kea.read_mask_window(f, 8, 4, 14, 10, bands=[1, 2])
        assert masks.shape == (2, 14, 10) and masks[0].all()
        np.testing.assert_array_equal(~masks[1], np.pad(np.ones((10, 4), bool), ((2, 2), (1, 5))))
        assert kea.read_mask_window(f, 0, 0, 1, 1, bands=[1]) is None


def test_rgb_fixture_crs_is_epsg_3413():
    import pyproj

    with kea.open_kea(fixture_path("rgb_3413.kea")) as (_, info):
        assert pyproj.CRS.from_wkt(info.crs_wkt).to_epsg() == 3413


def _gdal_checksum(band: np.ndarray) -> int:
    """GDAL's own checksum (``gdalinfo -checksum``) of a 2-D array."""
    from rasterio.io import MemoryFile

    rows, cols = band.shape
    profile = dict(driver="GTiff", width=cols, height=rows, count=1, dtype=band.dtype)
    with MemoryFile() as memory:
        with memory.open(**profile, crs="EPSG:3413", transform=Affine(3, 0, 0, 0, -3, 0)) as dst:
            dst.write(band, 1)
        with memory.open() as src:
            return src.checksum(1)


def test_fixture_pixels_have_gdals_checksums_and_no_masks():
    with kea.open_kea(fixture_path("rgb_3413.kea")) as (f, _):
        assert [_gdal_checksum(kea.read_band(f, b)) for b in (1, 2, 3)] == [19452, 19001, 18932]
        assert kea.read_mask_window(f, 0, 0, 600, 800, bands=[1, 2, 3]) is None
        assert all(f[f"BAND{b}/NO_DATA_VAL"].attrs["NO_DATA_DEFINED"].dtype == np.int8
                   for b in (1, 2, 3))  # fmt: skip
    with kea.open_kea(fixture_path("prob_float32.kea")) as (f, _):
        assert _gdal_checksum(kea.read_band(f, 1)) == 55000
        assert kea.read_mask_window(f, 0, 0, 300, 400, bands=[1]) is None

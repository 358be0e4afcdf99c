"""``merge.formats: [cog, kea]``: the merged rasters also as KEA, laid out as KEA_LAYOUT.md
requires, with the COGs' pixels, georeferencing and nodata, and the COGs' overviews."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import rasterio
from pyproj import CRS

from conftest import write_experiment
from deepseg.config import ConfigError, load_experiment
from deepseg.formats import kea, kea_pyramid
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from shared_scenes import offgrid_scene

VLEN = h5py.string_dtype("ascii")
# KEA_LAYOUT.md's required objects: path -> (numpy dtype or "group", shape); {dtype} = band's
REQUIRED = {
    "HEADER/FILETYPE": (VLEN, (1,)),
    "HEADER/VERSION": (VLEN, (1,)),
    "HEADER/NUMBANDS": ("<u2", (1,)),
    "HEADER/TL": ("<f8", (2,)),
    "HEADER/RES": ("<f8", (2,)),
    "HEADER/ROT": ("<f8", (2,)),
    "HEADER/SIZE": ("<u8", (2,)),
    "HEADER/WKT": (VLEN, (1,)),
    "BAND1/DATA": ("{dtype}", "{shape}"),
    "BAND1/DATATYPE": ("<u2", (1,)),
    "BAND1/DESCRIPTION": (VLEN, (1,)),
    "BAND1/LAYER_TYPE": ("u1", (1,)),
    "BAND1/METADATA": ("group", None),
    "BAND1/OVERVIEWS": ("group", None),
    "BAND1/ATT/HEADER/SIZE": ("<u8", (5,)),
    "BAND1/ATT/HEADER/CHUNKSIZE": ("<u8", (1,)),
}


def run(tmp_path, model_dir, **merge_keys):
    scene, _ = offgrid_scene(tmp_path, width=700, height=600)
    grid = {"tile_size": 128, "stride": 128, "chunk_tiles": 2}
    exp = load_experiment(write_experiment(tmp_path, [scene], model_dir, grid=grid,
                                           merge=merge_keys))  # fmt: skip
    create_tiles(exp)
    predict(exp)
    return exp, merge(exp)


def assert_required_layout(path, dtype, shape):
    with h5py.File(path, "r") as f:
        for name, (kind, size) in REQUIRED.items():
            obj = f.get(name)
            assert obj is not None, f"{name} is missing"
            if kind == "group":
                assert isinstance(obj, h5py.Group), name
                continue
            want = np.dtype(dtype).newbyteorder("<") if kind == "{dtype}" else np.dtype(kind)
            assert (obj.dtype, obj.shape) == (want, shape if size == "{shape}" else size), name
        block = f["BAND1/DATA"].attrs["BLOCK_SIZE"]
        assert block.dtype == np.uint16 and block == min(512, *shape)
        assert [f[f"HEADER/{k}"][0] for k in ("FILETYPE", "VERSION")] == [b"KEA", b"1.1"]
        assert f["HEADER/SIZE"][()].tolist() == [shape[1], shape[0]]
        assert f["BAND1/NO_DATA_VAL"].attrs["NO_DATA_DEFINED"] == 1


def test_kea_mosaics_hold_the_cog_pixels_and_an_overview_pyramid(tmp_path, model_dir):
    _, summary = run(tmp_path, model_dir, formats=["cog", "kea"])
    assert (summary["counts"]["regions_written"], summary["skipped"]) == (1, 0)
    merged = tmp_path / "out" / "merged"
    assert sorted(p.name for p in merged.iterdir()) == [
        "all_binary.kea", "all_binary.tif", "all_prob.kea", "all_prob.tif"
    ]  # fmt: skip
    products = {"prob": (np.float32, -1.0, "probability", "average"),
                "binary": (np.uint8, 255, "binary", "nearest")}  # fmt: skip
    for product, (dtype, nodata, description, resampling) in products.items():
        with rasterio.open(merged / f"all_{product}.tif") as cog:
            pixels, transform = cog.read(1), cog.transform
        assert pixels.shape == (600, 700)  # the scene's valid pixels reach all four edges
        assert_required_layout(merged / f"all_{product}.kea", dtype, pixels.shape)
        with kea.open_kea(merged / f"all_{product}.kea") as (f, info):
            assert (info.dtype, info.nodata, info.descriptions) == (
                dtype,
                (nodata,),
                (description,),
            )
            assert info.transform == transform and CRS.from_wkt(info.crs_wkt).to_epsg() == 3413
            np.testing.assert_array_equal(kea.read_band(f, 1), pixels)
            assert kea_pyramid.overview_count(f, 1) == 1  # 700 x 600 -> 350 x 300 fits one block
            overview = kea.read_window(f, 0, 0, 300, 350, level=1)[0]
        np.testing.assert_array_equal(overview, kea_pyramid.halve(pixels, resampling, nodata))
        with rasterio.open(merged / f"all_{product}.tif", overview_level=0) as cog:
            np.testing.assert_array_equal(overview, cog.read(1))  # GDAL's own overview
    assert not list(merged.glob(".*"))


def test_kea_mosaics_take_part_in_rerun_skipping(tmp_path, model_dir):
    exp, _ = run(tmp_path, model_dir, formats=["cog", "kea"])
    prob_kea = tmp_path / "out" / "merged" / "all_prob.kea"
    with h5py.File(prob_kea, "r") as f:
        before = kea.read_band(f, 1)
    summary = merge(exp)
    assert (summary["counts"], summary["skipped"]) == ({}, 1)
    prob_kea.unlink()  # a missing KEA mosaic makes the region due again
    summary = merge(exp)
    assert (summary["counts"]["regions_written"], summary["skipped"]) == (1, 0)
    with h5py.File(prob_kea, "r") as f:
        np.testing.assert_array_equal(kea.read_band(f, 1), before)


def test_default_formats_write_no_kea(tmp_path, model_dir):
    exp, _ = run(tmp_path, model_dir)
    assert exp.merge.formats == ("cog",)
    assert not list((tmp_path / "out" / "merged").glob("*.kea"))


@pytest.mark.parametrize(
    "formats,message",
    [(["kea"], "merge.formats: expected a list of formats from cog|kea that includes cog"),
     (["cog", "tif"], "merge.formats[1]: expected one of cog|kea, got 'tif'")],
)  # fmt: skip
def test_bad_formats_are_refused(tmp_path, model_dir, formats, message):
    scene, _ = offgrid_scene(tmp_path)
    path = write_experiment(tmp_path, [scene], model_dir, merge={"formats": formats})
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert message in str(err.value)

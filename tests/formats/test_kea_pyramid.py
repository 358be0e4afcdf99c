"""KEA overview pyramids: levels as libkea lays them out, halving checked pixel by pixel,
rasters written block by block that build their pyramid on close, in flat memory."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from affine import Affine

from deepseg.formats import kea, kea_pyramid
from kea_helpers import WKT_3413, hdf5_type, small_info


def test_write_overview(tmp_path):
    path = tmp_path / "ov.kea"
    with h5py.File(path, "w") as f:
        kea.create(f, small_info(width=700, height=600))
        kea_pyramid.write_overview(f, 1, 1, np.ones((300, 350), dtype=np.int16))
        kea_pyramid.write_overview(f, 1, 2, np.ones((150, 175), dtype=np.int16))
        with pytest.raises(kea.KeaError, match="cannot add level 4"):
            kea_pyramid.write_overview(f, 1, 4, np.ones((10, 10), dtype=np.int16))
    with h5py.File(path, "r") as f:
        overviews, data = f["BAND1/OVERVIEWS"], f["BAND1/DATA"]
        assert list(overviews) == ["OVERVIEW1", "OVERVIEW2"]
        for ov, block in ((overviews["OVERVIEW1"], 300), (overviews["OVERVIEW2"], 150)):
            assert ov.chunks == (block, block) and ov.attrs["BLOCK_SIZE"] == block
            assert hdf5_type(ov.id.get_type()) == hdf5_type(data.id.get_type())
            assert (ov.compression, ov.compression_opts, ov.shuffle) == ("gzip", 1, True)
            for k in ("CLASS", "IMAGE_VERSION"):
                assert ov.attrs[k] == data.attrs[k]
                assert hdf5_type(ov.attrs.get_id(k).get_type()) == hdf5_type(
                    data.attrs.get_id(k).get_type()
                )
        assert int(overviews["OVERVIEW2"][()].sum()) == 150 * 175


def _pyramid_cell(cell: np.ndarray, nodata: float | None) -> float:
    """One average-overview pixel, computed the slow obvious way."""
    values = [float(v) for v in cell.ravel() if not np.isnan(v) and v != nodata]
    return sum(values) / len(values) if values else nodata


def test_halve_average_and_nearest_match_a_pixel_by_pixel_computation():
    rng = np.random.default_rng(5)
    pixels = rng.random((7, 9)).astype(np.float32)
    pixels[0:2, 0:2] = -1.0  # a whole cell at nodata stays nodata
    pixels[2, 3], pixels[5, 8] = -1.0, np.nan  # partly invalid cells average the rest
    average = kea_pyramid.halve(pixels, "average", -1.0)
    assert average.shape == (4, 5) and average.dtype == np.float32
    for i in range(4):
        for j in range(5):
            cell = pixels[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            assert average[i, j] == np.float32(_pyramid_cell(cell, -1.0)), (i, j)
    nearest = kea_pyramid.halve(pixels, "nearest", -1.0)  # each cell's top-left pixel
    np.testing.assert_array_equal(nearest, pixels[np.ix_([0, 2, 4, 6], [0, 2, 4, 6, 8])])
    integers = np.array([[1, 2, 7], [2, 2, 255], [9, 9, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(kea_pyramid.halve(integers, "average", 255), [[2, 7], [9, 255]])


def _mosaic_info(width: int, height: int, dtype=np.float32, nodata=-1.0) -> kea.KeaInfo:
    transform = Affine(3.0, 0.0, -2000100.0, 0.0, -3.0, 1000100.0)
    return kea.KeaInfo(width, height, 1, np.dtype(dtype), transform, WKT_3413, (nodata,), ("p",))


def test_create_raster_writes_blocks_and_builds_the_overview_pyramid(tmp_path):
    rng = np.random.default_rng(8)
    pixels = rng.random((1100, 1301)).astype(np.float32)
    pixels[rng.random(pixels.shape) < 0.3] = -1.0
    path = tmp_path / "mosaic.kea"
    with kea_pyramid.create_raster(path, _mosaic_info(1301, 1100), overviews="average") as f:
        for r in range(0, 1100, 333):  # blocks that straddle the 512 px chunks
            for c in range(0, 1301, 290):
                kea.write_band(f, 1, pixels[r : r + 333, c : c + 290], r, c)
    expected = [pixels]  # the pyramid from whole arrays: 1100 x 1301 -> 550 x 651 -> 275 x 326
    while max(expected[-1].shape) > 512:
        expected.append(kea_pyramid.halve(expected[-1], "average", -1.0))
    assert [a.shape for a in expected[1:]] == [(550, 651), (275, 326)]
    with kea.open_kea(path) as (f, info):
        assert info == dataclasses.replace(_mosaic_info(1301, 1100), layer_usage=(0,))
        assert kea_pyramid.overview_count(f, 1) == 2
        for level, array in enumerate(expected):
            rows, cols = array.shape
            np.testing.assert_array_equal(
                kea.read_window(f, 0, 0, rows, cols, level=level)[0], array
            )
        data = f["BAND1/DATA"]
        for level, shape in ((1, (550, 651)), (2, (275, 326))):
            ov = f[f"BAND1/OVERVIEWS/OVERVIEW{level}"]
            block = min(512, *shape)
            assert (ov.shape, ov.chunks, ov.attrs["BLOCK_SIZE"]) == (shape, (block, block), block)
            assert hdf5_type(ov.id.get_type()) == hdf5_type(data.id.get_type())
            assert (ov.compression, ov.compression_opts, ov.shuffle) == ("gzip", 1, True)
            for k in ("CLASS", "IMAGE_VERSION"):
                assert ov.attrs[k] == data.attrs[k]
        assert list(f["BAND1/OVERVIEWS"]) == ["OVERVIEW1", "OVERVIEW2"]
        with pytest.raises(kea.KeaError, match="overview 3 does not exist"):
            kea.read_window(f, 0, 0, 1, 1, level=3)


def test_overviews_are_built_block_by_block_in_flat_memory(tmp_path):
    """A 64 MB band gets its overviews while Python holds a fraction of it (whole-array
    pyramids would hold the band and more)."""
    import tracemalloc

    path, side = tmp_path / "big.kea", 4096
    band_bytes = side * side * 4
    tracemalloc.start()
    try:
        with kea_pyramid.create_raster(path, _mosaic_info(side, side), overviews="average") as f:
            cols = np.arange(side, dtype=np.float32)
            for r in range(0, side, 256):  # pixel value = row + column
                kea.write_band(f, 1, cols + np.arange(r, r + 256, dtype=np.float32)[:, None], r, 0)
            tracemalloc.reset_peak()
        peak = tracemalloc.get_traced_memory()[1]  # the overviews, built on leaving
    finally:
        tracemalloc.stop()
    with kea.open_kea(path) as (f, _):
        assert kea_pyramid.overview_count(f, 1) == 3  # 2048, 1024, 512
        corner = kea.read_window(f, 0, 0, 2, 2, level=3)[0]  # 8 x 8 cells of r + c
        np.testing.assert_array_equal(corner, [[7.0, 15.0], [15.0, 23.0]])
    assert peak < band_bytes / 4, f"overviews held {peak / 2**20:.1f} MiB of Python memory"

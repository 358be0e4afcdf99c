"""The whole pipeline on real rasters: a real scene off the grid lattice (Peel Plateau, 3 m),
a rotated Landsat-7 footprint in a nodata collar (UTM 18N), a Landsat-8 zero collar without a
nodata tag (UTM 21N, southern hemisphere, far from the polar grid's pole) and a 1-band int16
Landsat-5 in EPSG:4326 with nodata -9999. What must hold on each: nodata stays nodata, nothing
is predicted outside valid data, valid data is predicted, the COGs are valid, and every polygon
lies inside the input's valid footprint."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from pyproj import Transformer
from rasterio import features
from rio_cogeo.cogeo import cog_validate

from conftest import shared_file, write_experiment, write_model
from deepseg.config import load_experiment
from deepseg.geo.grid import TileGrid
from deepseg.geo.sources import open_inputs, read_box
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.stores.tile_store import read_tile_store

WEST = [-6000000.0, 4100100.0]  # a grid origin west of the Landsat-7 and Landsat-5 scenes
TILES = {"tile_size": 128, "stride": 128, "chunk_tiles": 4}
# name: (file, grid, input, reach): reach = how many file pixels from valid data a warped
# grid pixel may still be valid (the bilinear kernel stretched by the downsampling)
CASES = {
    "peel": ("peel/peel_s2_rgb_3m_epsg3413.tif", {}, {}, 2),
    "landsat7": ("rasters/RGB.byte.tif", {"resolution": 800.0, "origin": WEST}, {}, 3),
    "landsat8": (
        "rasters/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
        {"resolution": 600.0},
        {"nodata": 0},
        8,
    ),
    "landsat5": (
        "rasters/nebraska_landsat5_with_nodata_wgs84.tif",
        {"resolution": 600.0, "origin": WEST},
        {"bands": [1]},
        20,
    ),
}


class BrightBlobs(torch.nn.Module):
    """Positive where the 5 x 5 mean of the normalized bands is above 0: bright blobs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 5, stride=1, padding=2)
        return mean * 8.0


def grow(mask: np.ndarray, k: int) -> np.ndarray:
    """True within k pixels (a (2k+1)-pixel square) of a True pixel: window sums by axis."""
    for axis in (0, 1):
        padded = np.pad(mask, [(k + 1, k) if a == axis else (0, 0) for a in (0, 1)])
        sums = np.cumsum(padded, axis=axis, dtype=np.int32)
        n = mask.shape[axis]
        mask = (
            sums.take(range(2 * k + 1, 2 * k + 1 + n), axis=axis) - sums.take(range(n), axis=axis)
        ) > 0
    return mask


def source_valid(path, bands, nodata) -> tuple[np.ndarray, rasterio.Affine, str]:
    """The file's own valid mask (any band read differs from nodata), its transform and CRS."""
    with rasterio.open(path) as src:
        data = src.read(bands)
        nodata = src.nodata if nodata is None else nodata
        return (data != nodata).any(axis=0), src.transform, src.crs.to_wkt()


def blob_model(folder, path, bands, valid):
    """A model whose normalization puts 0 at each band's 85th percentile over valid pixels."""
    with rasterio.open(path) as src:
        data = src.read(bands).astype(np.float64)
    mean = [float(np.percentile(b[valid], 85)) for b in data]
    std = [float(b[valid].std()) for b in data]
    return write_model(folder / "model", BrightBlobs(), mean=mean, std=std)


def map_to_file(grid_xy, transform, crs_wkt, grid_crs="EPSG:3413"):
    """Grid-CRS points -> (row, col) indices of the file's pixels, by pyproj (not GDAL)."""
    x, y = Transformer.from_crs(grid_crs, crs_wkt, always_xy=True).transform(*grid_xy)
    cols, rows = ~transform @ (np.asarray(x), np.asarray(y))
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def footprint(valid, transform, crs_wkt, grid_crs="EPSG:3413"):
    """The valid pixels as one (multi)polygon in the grid's CRS."""
    shapes = [shapely.geometry.shape(g) for g, v in features.shapes(
        valid.astype(np.uint8), mask=valid, transform=transform) if v == 1]  # fmt: skip
    area = shapely.segmentize(shapely.union_all(shapes), 5 * abs(transform.a))
    to_grid = Transformer.from_crs(crs_wkt, grid_crs, always_xy=True)
    return shapely.transform(area, lambda xy: np.column_stack(to_grid.transform(*xy.T)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_raster_through_the_pipeline(tmp_path, case):
    name, grid_keys, input_keys, reach = CASES[case]
    path = shared_file(name)
    bands = input_keys.get("bands", [1, 2, 3])
    valid_src, src_transform, src_crs = source_valid(path, bands, input_keys.get("nodata"))
    model = blob_model(tmp_path, path, bands, valid_src)
    exp_path = write_experiment(tmp_path, [path], model, grid=TILES | grid_keys, input=input_keys)
    exp = load_experiment(exp_path)
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp)
    out = tmp_path / "out"
    grid = TileGrid.from_experiment(exp)
    (raster,) = open_inputs(exp, grid)
    assert raster.offset is None  # every case is warped: another CRS or lattice

    # nodata stays nodata in the tile stores, in the input's own type
    nodata = raster.nodata if raster.nodata is not None else 0
    for store_path in sorted((out / "tiles").glob("*.kea")):
        store = read_tile_store(store_path)
        assert store.pixels.dtype == raster.dtype and store.nodata == raster.nodata
        assert (store.pixels[:, ~store.valid] == nodata).all()

    for product in ("all_prob.tif", "all_binary.tif"):
        is_valid, errors, _ = cog_validate(str(out / "merged" / product))
        assert is_valid, (product, errors)
    with rasterio.open(out / "merged" / "all_prob.tif") as src:
        prob, transform = src.read(1), src.transform
        box = grid.box_of_bounds(tuple(src.bounds))
    with rasterio.open(out / "merged" / "all_binary.tif") as src:
        np.testing.assert_array_equal(src.read(1) == 255, prob == -1)
    predicted = prob != -1
    _, warped_valid = read_box([raster], exp, grid, box)
    np.testing.assert_array_equal(predicted, warped_valid)  # predicted exactly where valid

    # independently (pyproj, not GDAL's warper): nothing predicted far from valid input, and
    # everything well inside valid input predicted
    rows, cols = np.mgrid[0 : prob.shape[0], 0 : prob.shape[1]]
    r, c = map_to_file(transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5), src_transform, src_crs)
    inside = (r >= 0) & (r < valid_src.shape[0]) & (c >= 0) & (c < valid_src.shape[1])
    near, deep = grow(valid_src, reach), ~grow(~valid_src, reach)
    rc = (np.clip(r, 0, valid_src.shape[0] - 1), np.clip(c, 0, valid_src.shape[1] - 1))
    near_valid, deep_valid = inside & near[rc], inside & deep[rc]
    assert not (predicted.ravel() & ~near_valid).any()
    assert predicted.ravel()[deep_valid].all()
    assert 0.05 < predicted.mean() < 0.999 and deep_valid.sum() > 0.5 * predicted.sum()

    # every polygon lies inside the valid footprint (grown by the kernel's reach)
    frame = gpd.read_file(out / "vectors" / "rts_predictions.gpkg", layer="rts_predictions")
    assert len(frame) > 0
    outline = footprint(valid_src, src_transform, src_crs)
    file_px_m = grid.resolution / min(raster.warp_scale)  # a file pixel, in grid metres
    grown = outline.buffer(reach * file_px_m + grid.resolution)
    assert frame.geometry.within(grown).all()

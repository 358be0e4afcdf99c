"""Inputs onto the grid: KEA files read exactly like GeoTIFFs (aligned and warped), warps that
do not depend on the chunking, and georeferencing errors that name the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import assert_one_line_error, run_script, shared_file, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.formats import kea, kea_pyramid
from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.geo.sources import open_inputs, read_box
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from kea_helpers import fixture_path, prob_expected, rgb_expected

WEST = [-6000000.0, 4100100.0]  # a grid origin west of the Landsat-7 and Landsat-5 scenes
# name: (file, grid keys, input keys); every one is warped onto the grid
REAL = {
    "peel": ("peel/peel_s2_rgb_3m_epsg3413.tif", {}, {"resampling": "cubic"}),
    "landsat7": ("rasters/RGB.byte.tif", {"resolution": 800.0, "origin": WEST}, {}),
    "landsat8": (  # no nodata tag: validity comes from where the warp reaches (alpha)
        "rasters/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
        {"resolution": 600.0},
        {"resampling": "average"},
    ),
    "landsat5": (
        "rasters/nebraska_landsat5_with_nodata_wgs84.tif",
        {"resolution": 300.0, "origin": WEST},
        {"bands": [1], "resampling": "nearest"},
    ),
}


def geotiff_to_kea(tif: Path, out: Path, rows: int = 512) -> Path:
    """The GeoTIFF's pixels, georeferencing, nodata and descriptions as KEA, ``rows`` at a time."""
    with rasterio.open(tif) as src:
        info = kea.KeaInfo(
            src.width,
            src.height,
            src.count,
            np.dtype(src.dtypes[0]),
            src.transform,
            src.crs.to_wkt(version="WKT1_GDAL"),
            src.nodatavals,
            tuple(d or "" for d in src.descriptions),
        )
        with kea_pyramid.create_raster(out, info) as f:
            for row in range(0, src.height, rows):
                window = rasterio.windows.Window(0, row, src.width, min(rows, src.height - row))
                for band, pixels in enumerate(src.read(window=window), 1):
                    kea.write_band(f, band, pixels, row, 0)
    return out


def write_kea(path: Path, pixels: np.ndarray, transform: Affine, nodata, descriptions=None):
    """A (bands, rows, cols) array as a KEA raster in EPSG:3413."""
    wkt = rasterio.crs.CRS.from_epsg(3413).to_wkt(version="WKT1_GDAL")
    count, rows, cols = pixels.shape
    info = kea.KeaInfo(cols, rows, count, pixels.dtype, transform, wkt, (nodata,) * count,
                       descriptions or ("",) * count)  # fmt: skip
    with kea_pyramid.create_raster(path, info) as f:
        for band, array in enumerate(pixels, 1):
            kea.write_band(f, band, array)
    return path


def quarters(box: PixelBox) -> list[PixelBox]:
    """Four unequal parts of ``box``, as four chunks would read it."""
    col, row = box.col0 + box.width // 3, box.row0 + box.height // 2 + 7
    return [
        PixelBox(box.col0, box.row0, col, row),
        PixelBox(col, box.row0, box.col1, row),
        PixelBox(box.col0, row, col, box.row1),
        PixelBox(col, row, box.col1, box.row1),
    ]


def inputs_of(folder: Path, rasters: list[Path], model: Path, **sections):
    exp = load_experiment(write_experiment(folder, rasters, model, **sections))
    grid = TileGrid.from_experiment(exp)
    return exp, grid, open_inputs(exp, grid)


@pytest.fixture(scope="module")
def kea_copy(tmp_path_factory):
    folder, made = tmp_path_factory.mktemp("kea_copies"), {}

    def make(tif: Path) -> Path:
        if tif not in made:
            made[tif] = geotiff_to_kea(tif, folder / f"{tif.stem}.kea")
        return made[tif]

    return make


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_raster_as_kea_warps_like_the_geotiff_in_any_chunking(
    tmp_path, model_dir, kea_copy, name
):
    tif_name, grid_keys, input_keys = REAL[name]
    tif = shared_file(tif_name)
    reads = []
    for path in (tif, kea_copy(tif)):
        exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, grid=grid_keys,
                                         input=input_keys)  # fmt: skip
        assert raster.offset is None and raster.box.width > 100
        pixels, valid = read_box([raster], exp, grid, raster.box)
        for part in quarters(raster.box):  # chunked reads give the whole read's pixels
            part_pixels, part_valid = read_box([raster], exp, grid, part)
            rows, cols = part.slices_in(raster.box)
            np.testing.assert_array_equal(part_pixels, pixels[:, rows, cols])
            np.testing.assert_array_equal(part_valid, valid[rows, cols])
        reads.append((dataclasses.replace(raster, path=tif), pixels, valid))
    (tif_raster, tif_pixels, tif_valid), (kea_raster, kea_pixels, kea_valid) = reads
    assert kea_raster == tif_raster  # same box, nodata, data type, scale, descriptions
    np.testing.assert_array_equal(kea_pixels, tif_pixels)
    np.testing.assert_array_equal(kea_valid, tif_valid)
    assert 0.1 < tif_valid.mean() < 0.999  # the scene's edge or nodata is inside the box


@pytest.mark.parametrize(
    "fixture,res,bands",
    [
        ("rgb_3413.kea", 3.0, [1, 2, 3]),
        ("rgb_3413.kea", 3.0, [3, 1]),
        ("prob_float32.kea", 6.0, [1]),
    ],
)
def test_kea_on_the_lattice_is_copied_bit_for_bit(tmp_path, model_dir, fixture, res, bands):
    path = fixture_path(fixture)
    origin = [-2000100.0 - 10 * res, 1000100.0 + 20 * res]  # the file starts at grid (10, 20)
    grid = {"resolution": res, "origin": origin}
    exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, grid=grid, input={"bands": bands})
    expected = rgb_expected() if fixture == "rgb_3413.kea" else prob_expected()[None]
    expected = expected[[b - 1 for b in bands]]
    nodata = 0 if fixture == "rgb_3413.kea" else -1.0
    names = {"rgb_3413.kea": ("red", "green", "blue"), "prob_float32.kea": ("probability",)}
    assert raster.offset == (10, 20) and raster.nodata == nodata
    assert raster.box == PixelBox(10, 20, 10 + expected.shape[2], 20 + expected.shape[1])
    assert raster.descriptions == tuple(names[fixture][b - 1] for b in bands)
    box = PixelBox(0, 15, 300, 260)  # over the file's top-left corner
    pixels, valid = read_box([raster], exp, grid, box)
    inner = expected[:, : 260 - 20, : 300 - 10]
    np.testing.assert_array_equal(pixels[:, 5:, 10:], inner)
    np.testing.assert_array_equal(valid[5:, 10:], (inner != nodata).any(axis=0))
    assert not valid[:5].any() and not valid[:, :10].any()
    assert (pixels[:, ~valid] == nodata).all()


def test_float32_rounded_pixel_size_is_on_the_lattice(tmp_path, model_dir):
    """kealib 2.0 stores RES as float32 (0.3 -> 0.30000001192...): still the 0.3 m lattice."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(1, 255, size=(3, 40, 2000), dtype=np.uint8)
    path = write_kea(tmp_path / "res.kea", pixels, Affine(0.3, 0, 1000.0, 0, -0.3, 2000.0), 0)
    with h5py.File(path, "r+") as f:
        f["HEADER/RES"][...] = np.float32([0.3, -0.3]).astype(np.float64)
        assert f["HEADER/RES"][0] == 0.30000001192092896
    grid = {"resolution": 0.3, "origin": [1000.0 - 0.3 * 7, 2000.0]}
    exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, grid=grid)
    assert raster.offset == (7, 0) and raster.box == PixelBox(7, 0, 2007, 40)
    read, valid = read_box([raster], exp, grid, raster.box)
    np.testing.assert_array_equal(read, pixels)
    assert valid.all()


def test_kea_mask_band_marks_invalid_pixels_like_a_geotiff_mask(tmp_path, model_dir):
    """No nodata: GDAL's per-band KEA mask (BANDn/MASK) decides, as a GeoTIFF's mask does."""
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 255, size=(3, 90, 120), dtype=np.uint8)
    valid = np.ones((90, 120), dtype=bool)
    valid[10:40, 20:70] = False
    transform = Affine(3.0, 0, -2000100.0, 0, -3.0, 1000100.0)
    kea_path = write_kea(tmp_path / "masked.kea", pixels, transform, None)
    with h5py.File(kea_path, "r+") as f:  # GDAL's KEA mask bands, one per band
        for band in (1, 2, 3):
            f[f"BAND{band}"].create_dataset("MASK", data=np.where(valid, 255, 0).astype("u1"))
    tif = write_raster(tmp_path / "masked.tif", pixels, transform, nodata=None)
    with rasterio.open(tif, "r+") as dst:
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    for origin in ([-2000100.0 - 30, 1000100.0 + 60], [-4000100.0, 4100100.0]):
        reads = []
        for path in (tif, kea_path):
            keys = dict(grid={"origin": origin}, input={"bands": [3, 1]})
            exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, **keys)
            reads.append(read_box([raster], exp, grid, raster.box))
        np.testing.assert_array_equal(reads[1][0], reads[0][0])
        np.testing.assert_array_equal(reads[1][1], reads[0][1])
        if raster.offset is not None:  # on the lattice: exactly the mask
            np.testing.assert_array_equal(reads[1][1], valid)
        assert 0.8 < reads[1][1].mean() < 0.9


def test_kea_run_gives_the_same_merged_rasters_as_the_geotiff_run(tmp_path, model_dir):
    """rgb_3413.kea, written by libkea, is 1/3 px off the 3 m grid (so it is warped): its run
    and the run on its pixels as a GeoTIFF give byte-identical merged rasters."""
    transform = Affine(3.0, 0.0, -2000100.0, 0.0, -3.0, 1000100.0)
    runs = {
        "kea": fixture_path("rgb_3413.kea"),
        "tif": write_raster(tmp_path / "rgb.tif", rgb_expected(), transform),
    }
    merged = {}
    for name, raster in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        grid = {"tile_size": 128, "stride": 128, "chunk_tiles": 2}
        exp = load_experiment(write_experiment(folder, [raster], model_dir, grid=grid))
        for stage in (create_tiles, predict, merge):
            stage(exp)
        merged[name] = {p: (folder / "out" / "merged" / p).read_bytes()
                        for p in ("all_prob.tif", "all_binary.tif")}  # fmt: skip
    assert merged["kea"] == merged["tif"]
    with rasterio.open(tmp_path / "kea" / "out" / "merged" / "all_prob.tif") as src:
        assert src.shape == (600, 780) and (src.read(1) != -1).all()
        assert src.transform == transform @ Affine.translation(1 / 3, -1 / 3)  # the grid's


def test_kea_and_geotiff_inputs_mix_in_one_mosaic(tmp_path, model_dir):
    """The fixture's pixels split into a KEA half and a GeoTIFF half read as the whole."""
    rgb, transform = rgb_expected(), Affine(3.0, 0.0, -2000100.0, 0.0, -3.0, 1000100.0)
    tif = write_raster(tmp_path / "rgb.tif", rgb, transform)
    left = write_kea(tmp_path / "left.kea", np.ascontiguousarray(rgb[:, :, :400]), transform, 0)
    right = write_raster(
        tmp_path / "right.tif", rgb[:, :, 400:], transform @ Affine.translation(400, 0)
    )
    on_lattice = {"origin": [-2000100.0 - 3 * 70, 1000100.0 + 3 * 30]}
    exp, grid, whole = inputs_of(tmp_path, [tif], model_dir, grid=on_lattice)
    _, _, halves = inputs_of(tmp_path, [left, right], model_dir, grid=on_lattice)
    assert [r.offset for r in halves] == [(70, 30), (470, 30)]
    box = PixelBox(60, 25, 900, 640)
    expected_pixels, expected_valid = read_box(whole, exp, grid, box)
    pixels, valid = read_box(halves, exp, grid, box)
    np.testing.assert_array_equal(pixels, expected_pixels)
    np.testing.assert_array_equal(valid, expected_valid)
    assert valid.sum() == 600 * 780


def _broken(path: Path, how: str) -> Path:
    pixels = np.ones((3, 20, 30), dtype=np.uint8)
    write_kea(path, pixels, Affine(3.0, 0, -2000100.0, 0, -3.0, 1000100.0), 0)
    with h5py.File(path, "r+") as f:
        if how == "no_crs":
            f["HEADER/WKT"][0] = b""
        elif how == "bad_crs":
            f["HEADER/WKT"][0] = b"PROJCS[nonsense"
        elif how == "nodata_differs":
            f["BAND2/NO_DATA_VAL"][0] = 255
        elif how == "zero_pixel":
            f["HEADER/RES"][0] = 0.0
    return path


@pytest.mark.parametrize(
    "how,message",
    [
        ("no_crs", "the raster has no CRS"),
        ("bad_crs", "/HEADER/WKT is not a CRS ("),
        ("nodata_differs", "band 1: 0, band 2: 255"),
        ("zero_pixel", "no usable geotransform"),
    ],
)
def test_bad_kea_georeferencing_is_one_line_naming_the_file(tmp_path, model_dir, how, message):
    path = _broken(tmp_path / f"{how}.kea", how)
    exp = write_experiment(tmp_path, [path], model_dir)
    line = assert_one_line_error(run_script("create_tiles.py", exp), str(path))
    assert message in line
    assert not (tmp_path / "out" / "tiles").exists()


@pytest.mark.parametrize("kind", ["random bytes", "rotated"])
def test_broken_kea_input_stops_with_one_line(tmp_path, model_dir, kind):
    path = tmp_path / "broken.kea"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        write_kea(path, np.ones((3, 20, 30), np.uint8), Affine(3.0, 0.5, 0, 0, -3.0, 0), 0)
    exp = write_experiment(tmp_path, [path], model_dir)
    line = assert_one_line_error(run_script("create_tiles.py", exp), str(path))
    assert ("not a readable HDF5/KEA" if kind == "random bytes" else "rotated") in line


def test_footprint_where_the_grid_projection_breaks_down_is_refused(tmp_path, model_dir):
    """A raster reaching the south pole has no finite EPSG:3413 footprint: named, not tiled."""
    south = write_raster(tmp_path / "south.tif", np.ones((1, 30, 360), np.uint8),
                         Affine(1.0, 0, -180.0, 0, -1.0, -60.0), crs="EPSG:4326")  # fmt: skip
    exp = load_experiment(write_experiment(tmp_path, [south], model_dir, input={"bands": [1]}))
    with pytest.raises(DeepSegError, match="projection breaks down") as err:
        open_inputs(exp, TileGrid.from_experiment(exp))
    assert str(south) in str(err.value)


def test_warped_inputs_without_nodata_keep_their_mask_or_alpha(tmp_path, model_dir):
    """GDAL's warper drops a 2-band raster's mask and refuses to add alpha to an RGBA one;
    both must come out invalid exactly where a 3-band raster with the same mask does."""
    rng = np.random.default_rng(6)
    pixels = rng.integers(1, 255, size=(3, 90, 120), dtype=np.uint8)
    mask = np.full((90, 120), 255, dtype=np.uint8)
    mask[10:40, 20:70] = 0
    transform = Affine(3.0, 0, -2000100.0, 0, -3.0, 1000100.0)  # 1/3 px off the grid
    masked = write_raster(tmp_path / "masked.tif", pixels, transform, nodata=None)
    two = write_raster(tmp_path / "two.tif", pixels[:2], transform, nodata=None)
    for path in (masked, two):
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(mask)
    rgba = tmp_path / "rgba.tif"
    profile = dict(driver="GTiff", width=120, height=90, count=4, dtype="uint8", crs="EPSG:3413")
    with rasterio.open(
        rgba, "w", transform=transform, photometric="RGB", alpha="YES", **profile
    ) as f:
        f.write(np.concatenate([pixels, mask[None]]))
    reads = {}
    for name, path, bands in (("3", masked, [1, 2]), ("2", two, [1, 2]), ("rgba", rgba, [1, 2])):
        exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, input={"bands": bands})
        assert raster.offset is None and raster.nodata is None
        reads[name] = read_box([raster], exp, grid, raster.box)
    for name in ("2", "rgba"):
        np.testing.assert_array_equal(reads[name][0], reads["3"][0])
        np.testing.assert_array_equal(reads[name][1], reads["3"][1])
    valid = reads["3"][1]
    assert not valid[12:39, 22:69].any() and valid[45:85, 5:115].all()


@pytest.mark.parametrize("nodata", [np.nan, None])
def test_float_input_with_nan_reads_alike_as_kea_and_geotiff(tmp_path, model_dir, nodata):
    """NaN pixels are invalid, whether NaN is the nodata value or there is none."""
    rng = np.random.default_rng(9)
    pixels = rng.random((3, 90, 120)).astype(np.float32)
    pixels[:, 10:40, 20:70] = np.nan
    transform = Affine(3.0, 0, -2000100.0, 0, -3.0, 1000100.0)
    tif = write_raster(tmp_path / "nan.tif", pixels, transform, nodata=nodata)
    kea_path = write_kea(tmp_path / "nan.kea", pixels, transform, nodata)
    for origin in ([-2000100.0 - 30, 1000100.0 + 60], [-4000100.0, 4100100.0]):
        reads = []
        for path in (tif, kea_path):
            exp, grid, (raster,) = inputs_of(tmp_path, [path], model_dir, grid={"origin": origin})
            reads.append(read_box([raster], exp, grid, raster.box))
        np.testing.assert_array_equal(reads[1][0], reads[0][0])  # NaN where NaN
        np.testing.assert_array_equal(reads[1][1], reads[0][1])
        valid = reads[0][1]
        assert not valid[12:39, 22:69].any() and valid[45:85, 5:115].all()
        assert not np.isnan(reads[0][0][:, valid]).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("nodata", [0, 2, float("nan")])
def test_valid_mask_band_by_band_is_the_rule(dtype, nodata):
    from deepseg.geo.sources import _valid_mask

    data = np.random.default_rng(1).integers(0, 3, (4, 50, 60)).astype(dtype)
    if data.dtype.kind == "f":
        data[1, ::7, ::5] = np.nan
    # the rule: valid where any band differs from nodata and none is NaN
    rule = ~np.isnan(data.astype(np.float64)).any(axis=0)
    if not np.isnan(nodata):
        rule &= (data != np.asarray(nodata, dtype=data.dtype)).any(axis=0)
    mask = _valid_mask(data, nodata)
    assert mask.shape == (50, 60) and np.array_equal(mask, rule) and mask.any()
    if data.dtype.kind == "f" or not np.isnan(nodata):  # integers cannot be NaN
        assert not mask.all()

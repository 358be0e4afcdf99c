"""Invalid georeferencing stops the run with a line naming the file: non-square pixels in a
projected CRS, and tile stores that do not sit on the experiment's grid."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from affine import Affine

from conftest import ORIGIN, lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.geo.sources import open_inputs
from deepseg.run.manifest import fold
from deepseg.run.stage import select_shard
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import RunPaths
from shared_scenes import corner_scene

AT = (640, 640)  # grid (col, row) of the rasters' top-left corner


def raster_with_pixels(tmp_path, width_m: float, height_m: float, crs: str = "EPSG:3413"):
    x, y = lattice_transform(*AT) @ (0, 0)
    if crs == "EPSG:4326":
        x, y = -100.0, 70.0
    transform = Affine(width_m, 0, x, 0, -height_m, y)
    data = np.full((3, 30, 40), 50, dtype=np.uint8)
    return write_raster(tmp_path / "input.tif", data, transform, crs=crs)


def test_non_square_pixels_are_refused_naming_the_file_and_the_fix(tmp_path, model_dir):
    raster = raster_with_pixels(tmp_path, 3.0, 3.5)
    exp = load_experiment(write_experiment(tmp_path, [raster], model_dir))
    with pytest.raises(DeepSegError) as error:
        create_tiles(exp)
    message = str(error.value)
    assert message.startswith(f"{raster}: non-square pixels (3 x 3.5 CRS units)")
    assert "gdalwarp -t_srs EPSG:3413 -tr 3 3 -r bilinear IN OUT" in message
    assert "input.non_square_pixels: warp" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_non_square_pixels_are_warped_when_asked(tmp_path, model_dir):
    raster = raster_with_pixels(tmp_path, 3.0, 3.5)
    exp = load_experiment(
        write_experiment(tmp_path, [raster], model_dir, input={"non_square_pixels": "warp"})
    )
    [source] = open_inputs(exp, TileGrid.from_experiment(exp))
    # 40 x 30 pixels of 3 x 3.5 m = 120 x 105 m = 40 x 35 grid pixels, warped
    assert source.offset is None and source.box == PixelBox(*AT, AT[0] + 40, AT[1] + 35)
    assert source.warp_scale == (1.0, pytest.approx(3.5 / 3.0))


@pytest.mark.parametrize(
    ("width", "height", "crs"),
    [
        (3.0, 3.0 * (1 + 5e-4), "EPSG:3413"),  # reprojection leftovers, under 0.1%
        (0.0002, 0.0001, "EPSG:4326"),  # unequal degrees: a deliberate geographic layout
    ],
)
def test_nearly_square_and_geographic_pixels_pass(tmp_path, model_dir, width, height, crs):
    raster = raster_with_pixels(tmp_path, width, height, crs)
    exp = load_experiment(write_experiment(tmp_path, [raster], model_dir))
    [source] = open_inputs(exp, TileGrid.from_experiment(exp))
    assert source.offset is None  # warped onto the grid, not refused


def test_tile_stores_staged_for_another_grid_are_refused_before_predicting(tmp_path, model_dir):
    raster = corner_scene(tmp_path)
    create_tiles(load_experiment(write_experiment(tmp_path, [raster], model_dir)))
    paths = RunPaths(tmp_path / "out")
    first = paths.tile_stores()[0]  # c00002_r00005: c00002_r00004 has no tiles
    # a second scale needs a 32 px halo the stores lack
    wider = write_experiment(tmp_path, [raster], model_dir, inference={"scales": [1.0, 0.5]})
    with pytest.raises(DeepSegError) as error:
        predict(load_experiment(wider))
    assert str(error.value) == (
        f"{first}: made on another grid (it covers grid pixels [128, 320, 224, 416], this grid "
        "puts its chunk at [96, 288, 256, 448]); grid.*, crs or inference.scales changed since "
        "it was written: restore them, or write this run to a new output.path (or delete "
        "that folder's tiles/ and predictions/ first)"
    )
    # the grid moved by one pixel: the same boxes, another georeferencing
    moved = write_experiment(
        tmp_path, [raster], model_dir, grid={"origin": [ORIGIN[0] - 3.0, ORIGIN[1]]}
    )
    with pytest.raises(DeepSegError, match="made on another grid .its geotransform"):
        predict(load_experiment(moved))
    assert not paths.predictions.exists()


def test_each_store_on_another_grid_fails_its_unit(tmp_path, model_dir):
    """Stores restaged for another grid after the first one was checked fail one by one."""
    raster = corner_scene(tmp_path)
    plain = load_experiment(write_experiment(tmp_path, [raster], model_dir))
    create_tiles(plain)
    paths = RunPaths.of(plain)
    wider = write_experiment(tmp_path / "w", [raster], model_dir, inference={"scales": [1.0, 0.5]})
    create_tiles(load_experiment(wider))  # create_tiles refuses in place: copied in by hand
    restaged = set(select_shard(sorted(fold(paths, "create_tiles")), (0, 2)))  # not the first
    restaged &= {p.stem for p in paths.tile_stores()}
    for unit in restaged:
        shutil.copyfile(tmp_path / "w" / "out" / "tiles" / f"{unit}.kea", paths.tile_store(unit))
    with pytest.raises(DeepSegError, match=rf"predict: {len(restaged)} unit\(s\) failed"):
        predict(plain)
    manifest = json.loads((paths.logs / "predict_manifest.json").read_text())
    failed = {r["unit"]: r["error"] for r in manifest["units"] if r["status"] == "failed"}
    assert set(failed) == restaged and len(restaged) == 14
    for unit, error in failed.items():
        assert error.startswith(f"{paths.tile_store(unit)}: made on another grid (it covers")

"""The merge product ``preview``: max-pooled probabilities, imagery underneath, a legend."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from conftest import lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.stages.merge import merge
from deepseg.stages.merge_bands import windows
from deepseg.stages.predict import predict
from deepseg.stages.preview import PeakProbability, PreviewGrid, render, warped_imagery
from deepseg.stages.tiles import create_tiles

AT = (2048 + 3, 4096 + 5)  # grid (col, row) of the test raster's pixel (0, 0)


def test_peak_is_the_max_over_each_cell_whatever_the_windows():
    box = PixelBox(7, 11, 7 + 1003, 11 + 701)
    grid = PreviewGrid.of(box, longest=100)
    assert (grid.factor, grid.width, grid.height) == (11, 92, 64)
    rng = np.random.default_rng(0)
    prob = rng.random((box.height, box.width), dtype=np.float32)
    prob[100:400, 200:650] = -1  # nodata: loses against any probability
    peak = PeakProbability(grid)
    for window in windows(box, 300):  # 300 is not a multiple of 11: cells span windows
        peak.add(window, prob[window.slices_in(box)])
    padded = np.full((64 * 11, 92 * 11), -1, np.float32)
    padded[: box.height, : box.width] = prob
    expected = padded.reshape(64, 11, 92, 11).max(axis=(1, 3))
    np.testing.assert_array_equal(peak.peak, expected)
    assert (peak.peak == -1).sum() == (expected == -1).sum() > 0


def _png_pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _outline_pixels(rgb: np.ndarray) -> int:
    """Pixels drawn in the threshold outline's colour (#00e5ff)."""
    return int((np.abs(rgb - [0, 229, 255]).sum(axis=-1) < 40).sum())


@pytest.mark.parametrize("detected", [True, False])
def test_render_outlines_cells_at_the_threshold(tmp_path, detected):
    peak = np.full((120, 200), 0.2, np.float32)
    peak[40:60, 50:90] = 0.9 if detected else 0.6
    peak[:, :10] = -1
    render(tmp_path / "p.png", peak, None, 0.7, "test", 6.0)
    rgb = _png_pixels(tmp_path / "p.png")
    assert rgb.shape == (120 + 110, 200 + 260, 3)  # the image at 1:1 plus the legend margins
    # the outline's colour is only in the legend's line sample when nothing reaches 0.7
    legend_only = _outline_pixels(rgb[-60:, :200])
    drawn = _outline_pixels(rgb) - legend_only
    assert (drawn > 2 * (20 + 40)) if detected else (drawn == 0)


def test_imagery_is_the_input_averaged_onto_preview_pixels(tmp_path, model_dir):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 255, (3, 64, 96), dtype=np.uint8)
    data[:, :16, :16] = 0  # nodata corner: whole 4 x 4 cells
    raster = write_raster(tmp_path / "img.tif", data, lattice_transform(*AT), nodata=0)
    exp = load_experiment(write_experiment(tmp_path, [raster], model_dir))
    box = PixelBox(AT[0], AT[1], AT[0] + 96, AT[1] + 64)
    values, reached = warped_imagery(exp, TileGrid.from_experiment(exp), PreviewGrid.of(box, 24))
    expected = data.reshape(3, 16, 4, 24, 4).astype(float).mean(axis=(2, 4))
    whole = np.ones((16, 24), bool)
    whole[:4, :4] = False  # the cells whose every pixel is valid
    assert reached[whole].all() and not reached[:3, :3].any()  # GDAL may reach edge cells
    np.testing.assert_allclose(values[:, whole], expected[:, whole], atol=0.5)


def test_merge_writes_a_preview_per_region(tmp_path, model_dir):
    data = np.full((3, 150, 200), 20, np.uint8)
    data[1], data[2] = 110, 120
    data[0, 40:80, 60:120] = 200  # one bright block: detected by the pointwise test model
    raster = write_raster(tmp_path / "scene.tif", data, lattice_transform(*AT))
    exp_path = write_experiment(tmp_path, [raster], model_dir, merge={"products": ["preview"]})
    exp = load_experiment(exp_path)
    for stage in (create_tiles, predict, merge):
        stage(exp)
    merged = tmp_path / "out" / "merged"
    with rasterio.open(merged / "all_prob.tif") as src:
        width, height = src.width, src.height
    rgb = _png_pixels(merged / "all_preview.png")
    assert rgb.shape == (height + 110, width + 260, 3)
    assert _outline_pixels(rgb[:height]) > 2 * (40 + 60)

"""The core geometry, proved with a pointwise model: tiled, chunked, merged inference equals the
model applied to the whole raster at once, pixel for pixel and georeference for georeference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import (
    assert_same_probability,
    lattice_transform,
    reference_probability,
    shared_file,
    write_experiment,
)
from deepseg.config import load_experiment
from deepseg.geo.grid import TileGrid
from deepseg.geo.sources import open_inputs, read_box
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stores.tile_store import read_tile_store
from shared_scenes import OFFGRID_AT, offgrid_scene


def run(experiment: Path) -> None:
    exp = load_experiment(experiment)
    create_tiles(exp)
    predict(exp)
    merge(exp)


def read_merged(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 3413
        return src.read(1), src.transform


def offset_in(raster_transform, merged_transform) -> tuple[int, int]:
    """(row, col) of the merged raster's pixel (0, 0) inside the input raster; exact lattice."""
    col = (merged_transform.c - raster_transform.c) / 3.0
    row = (raster_transform.f - merged_transform.f) / 3.0
    assert col == int(col) and row == int(row), "merged raster is off the grid lattice"
    assert merged_transform.a == 3.0 and merged_transform.e == -3.0
    return int(row), int(col)


@pytest.mark.parametrize(
    "tile,stride,chunk_tiles",
    [(64, 32, 1), (64, 32, 2), (64, 32, 3), (64, 16, 1), (64, 64, 2), (48, 16, 4)],
)
def test_merged_equals_whole_image(tmp_path, model_dir, tile, stride, chunk_tiles):
    scene, data = offgrid_scene(tmp_path)
    valid = (data != 0).any(axis=0)
    grid = {"tile_size": tile, "stride": stride, "chunk_tiles": chunk_tiles}
    run(write_experiment(tmp_path, [scene], model_dir, grid=grid))
    merged, transform = read_merged(tmp_path / "out" / "merged" / "all_prob.tif")
    expected = reference_probability(data, valid)
    row, col = offset_in(lattice_transform(*OFFGRID_AT), transform)
    rows, cols = np.nonzero(valid)
    # the default region is exactly the bounding box of the valid input pixels
    assert (row, col) == (rows.min(), cols.min())
    assert merged.shape == (rows.max() - row + 1, cols.max() - col + 1)
    assert_same_probability(merged, expected[row:, col:][: merged.shape[0], : merged.shape[1]])


def test_regions_cut_anywhere(tmp_path, model_dir):
    scene, data = offgrid_scene(tmp_path)
    x0, y0 = lattice_transform(*OFFGRID_AT) @ (0, 0)
    # two regions meeting at raster column 150 / row 120, neither aligned with a chunk
    west = [x0 + 3 * 20, y0 - 3 * 200, x0 + 3 * 150, y0 - 3 * 5]
    south_east = [x0 + 3 * 150, y0 - 3 * 257, x0 + 3 * 301, y0 - 3 * 120]
    exp = write_experiment(
        tmp_path,
        [scene],
        model_dir,
        regions={"west": west, "se": south_east},
        grid={"chunk_tiles": 3},
    )
    run(exp)
    expected = reference_probability(data, (data != 0).any(axis=0))
    for name, (r0, r1, c0, c1) in {"west": (5, 200, 20, 150), "se": (120, 257, 150, 301)}.items():
        merged, transform = read_merged(tmp_path / "out" / "merged" / f"{name}_prob.tif")
        assert offset_in(lattice_transform(*OFFGRID_AT), transform) == (r0, c0)
        assert_same_probability(merged, expected[r0:r1, c0:c1])


def test_tile_list_predicts_only_listed_tiles(tmp_path, model_dir):
    scene, data = offgrid_scene(tmp_path)
    grid = TileGrid(*(-4000100.0, 4100100.0), 3.0, 64, 32, 2, 0)
    c0, r0 = OFFGRID_AT[0] // 32 + 2, OFFGRID_AT[1] // 32 + 3
    listed = [(c0, r0), (c0 + 1, r0), (c0 + 4, r0 + 2)]
    csv = tmp_path / "tiles.csv"
    csv.write_text(
        "tile_id,minx,miny,maxx,maxy\n"
        + "".join(
            f"{grid.tile_id(c, r)},{','.join(map(str, grid.bounds(grid.tile_box(c, r))))}\n"
            for c, r in listed
        )
    )
    run(write_experiment(tmp_path, [scene], model_dir, grid={"tile_list": str(csv)}))
    merged, transform = read_merged(tmp_path / "out" / "merged" / "all_prob.tif")
    row, col = offset_in(lattice_transform(*OFFGRID_AT), transform)
    expected = reference_probability(data, (data != 0).any(axis=0))
    covered = np.zeros(data.shape[1:], dtype=bool)
    for c, r in listed:
        box = grid.tile_box(c, r)
        covered[
            box.row0 - OFFGRID_AT[1] : box.row1 - OFFGRID_AT[1],
            box.col0 - OFFGRID_AT[0] : box.col1 - OFFGRID_AT[0],
        ] = True
    expected = np.where(covered, expected, -1.0)
    rows, cols = np.nonzero(expected != -1)
    assert (row, col) == (rows.min(), cols.min())
    h, w = merged.shape
    assert_same_probability(merged, expected[row : row + h, col : col + w])


def test_aligned_input_is_staged_bit_for_bit(tmp_path, model_dir):
    scene, data = offgrid_scene(tmp_path)
    exp = load_experiment(
        write_experiment(tmp_path, [scene], model_dir, inference={"scales": [1.0, 0.5]})
    )
    create_tiles(exp)
    stores = sorted((tmp_path / "out" / "tiles").glob("*.kea"))
    assert stores
    for path in stores:
        store = read_tile_store(path)
        inner = store.box.intersection(
            type(store.box)(OFFGRID_AT[0], OFFGRID_AT[1], OFFGRID_AT[0] + 301, OFFGRID_AT[1] + 257)
        )
        rows, cols = inner.slices_in(store.box)
        src = data[
            :,
            inner.row0 - OFFGRID_AT[1] : inner.row1 - OFFGRID_AT[1],
            inner.col0 - OFFGRID_AT[0] : inner.col1 - OFFGRID_AT[0],
        ]
        np.testing.assert_array_equal(store.pixels[:, rows, cols], src)
        assert store.valid[rows, cols].sum() == (src != 0).any(axis=0).sum()
        assert store.valid.sum() == store.valid[rows, cols].sum()  # nothing valid off the raster


def test_unaligned_real_scene_is_warped_consistently(tmp_path, model_dir):
    """Peel Plateau (real S2, lattice off the grid): chunked warping equals one whole warp."""
    scene = shared_file("peel/peel_s2_rgb_3m_epsg3413.tif")
    exp_path = write_experiment(
        tmp_path, [scene], model_dir, grid={"tile_size": 128, "stride": 64, "chunk_tiles": 3}
    )
    run(exp_path)
    exp = load_experiment(exp_path)
    grid = TileGrid.from_experiment(exp)
    inputs = open_inputs(exp, grid)
    assert inputs[0].offset is None  # really warped
    pixels, valid = read_box(inputs, exp, grid, inputs[0].box)
    expected = reference_probability(pixels, valid)
    merged, transform = read_merged(tmp_path / "out" / "merged" / "all_prob.tif")
    origin = grid.transform(inputs[0].box)
    row, col = offset_in(origin, transform)
    h, w = merged.shape
    assert_same_probability(merged, expected[row : row + h, col : col + w])
    assert (merged == -1).sum() == (~valid[row : row + h, col : col + w]).sum()
    assert 0.5 < valid.mean() < 1.0  # the scene's nodata corners stay nodata

"""create_training_data on the real Peel scene and its expert labels, and on a hand-made one."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import h5py
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from rasterio.features import rasterize

from conftest import lattice_transform, shared_file, write_raster
from deepseg.config import load_experiment
from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.geo.sources import open_inputs, read_box
from deepseg.stages.training_data import create_training_data

GRID = {"tile_size": 128, "stride": 64, "chunk_tiles": 4}


def experiment(folder: Path, rasters: list[Path], labels: Path, **train) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "peel.yaml"
    settings = {"rasters": [str(r) for r in rasters], "labels": str(labels), **train}
    path.write_text(yaml.safe_dump({
        "name": "peel", "output": {"path": str(folder / "out")},
        "input": {"rasters": [str(r) for r in rasters]}, "model": {"dir": str(folder / "none")},
        "grid": GRID, "train": settings,
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def peel(tmp_path_factory):
    scene = shared_file("peel/peel_s2_rgb_3m_epsg3413.tif")
    labels = shared_file("peel/peel_labels_epsg3413.gpkg")
    folder = tmp_path_factory.mktemp("peel")
    exp = load_experiment(
        experiment(folder, [scene], labels, label_layer="consensus_ge6of12", folds=3,
                   fold_block_px=256),
        check_inputs=False,
    )  # fmt: skip
    return exp, create_training_data(exp)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        out = {k: f[k][()] for k in ("images", "labels")}
        out.update({k: f["tiles"][k][()] for k in f["tiles"]})
        out["attrs"] = dict(f.attrs)
    return out


def test_store_pixels_are_the_scene_on_the_grid_lattice(peel):
    exp, result = peel
    grid, store = TileGrid.from_experiment(exp), store_arrays(exp.train.store)
    inputs = open_inputs(exp, grid)
    t = grid.tile_size
    assert result["tiles"] == len(store["images"]) > 10
    for i, (c, r) in enumerate(zip(store["col0"], store["row0"], strict=True)):
        box = PixelBox(int(c), int(r), int(c) + t, int(r) + t)
        pixels, valid = read_box(inputs, exp, grid, box)
        np.testing.assert_array_equal(store["images"][i], pixels)
        assert store["valid_fraction"][i] == pytest.approx(valid.mean())
        assert c % 64 == 0 and r % 64 == 0
        assert store["tile_id"][i].decode() == f"c{c // 64}_r{r // 64}"
        np.testing.assert_allclose(store["bounds"][i], grid.bounds(box))
        assert store["fold"][i] == (c // 256 + 2 * (r // 256)) % 3


def test_labels_are_the_consensus_polygons_on_the_lattice(peel):
    exp, _ = peel
    grid, store = TileGrid.from_experiment(exp), store_arrays(exp.train.store)
    consensus = gpd.read_file(exp.train.labels, layer="consensus_ge6of12")
    mask_path = shared_file("peel/peel_consensus_mask_3m_epsg3413.tif")
    mask_exp = exp.__class__(**{**exp.__dict__, "input": exp.input.__class__(
        **{**exp.input.__dict__, "rasters": (mask_path,), "resampling": "nearest",
           "bands": (1,), "nodata": 255})})  # fmt: skip
    mask_inputs = open_inputs(mask_exp, grid)
    t, agree, total = grid.tile_size, 0, 0  # pixels where the experts' mask agrees
    for i, (c, r) in enumerate(zip(store["col0"], store["row0"], strict=True)):
        box = PixelBox(int(c), int(r), int(c) + t, int(r) + t)
        burnt = rasterize(consensus.geometry, (t, t), transform=grid.transform(box))
        valid = store["images"][i].any(axis=0)
        want = np.where(valid, burnt, 255)
        np.testing.assert_array_equal(store["labels"][i], want)
        mask, _ = read_box(mask_inputs, mask_exp, grid, box)  # the experts' mask, nearest
        agree += ((mask[0] > 0) == (burnt > 0))[valid].sum()
        total += valid.sum()
    assert (store["labels"] == 1).sum() > 10_000  # slumps are in the store
    # the consensus polygons follow the scene's pixel edges, so its mask read onto the lattice
    # (nearest) is the same labelling, pixel for pixel
    assert agree == total


def test_statistics_equal_numpy_on_the_stored_pixels(peel):
    exp, result = peel
    store = store_arrays(exp.train.store)
    valid = store["labels"] != 255
    for b in range(3):
        x = store["images"][:, b][valid].astype(np.float64)
        assert result["mean"][b] == pytest.approx(x.mean(), rel=1e-9, abs=1e-6)
        assert result["std"][b] == pytest.approx(x.std(), rel=1e-9, abs=1e-6)
    stats = json.loads((exp.train.store.parent / "normalization_stats.json").read_text())
    assert stats["data_version"] == store["attrs"]["data_version"] == result["data_version"]


def test_a_rerun_keeps_the_store_and_force_remakes_the_same_content(peel):
    exp, result = peel
    before = exp.train.store.stat().st_mtime_ns
    assert create_training_data(exp)["data_version"] == result["data_version"]
    assert exp.train.store.stat().st_mtime_ns == before  # up to date: not rewritten
    again = create_training_data(exp, force=True)
    assert again["data_version"] == result["data_version"]
    assert exp.train.store.stat().st_mtime_ns != before


def test_classes_nodata_and_aoi_on_a_hand_made_scene(tmp_path):
    data = np.full((3, 300, 400), 80, np.uint8)
    data[:, 250:, :] = 0  # nodata rows
    scene = write_raster(tmp_path / "scene.tif", data, lattice_transform(6400, 3200))
    x0, y0 = lattice_transform(6400, 3200) @ (0, 0)

    def px(c0, r0, c1, r1):  # raster pixels -> map polygon
        return shapely.box(x0 + 3 * c0, y0 - 3 * r1, x0 + 3 * c1, y0 - 3 * r0)

    labels = gpd.GeoDataFrame(
        {"kind": ["slump", "headwall", "slump"]},
        geometry=[px(10, 10, 50, 40), px(30, 20, 60, 30), px(200, 230, 260, 270)],
        crs="EPSG:3413",
    ).to_crs("EPSG:4326")  # any CRS: reprojected to the grid's
    labels.to_file(tmp_path / "labels.gpkg")
    gpd.GeoDataFrame(geometry=[px(0, 0, 320, 300)], crs="EPSG:3413").to_file(tmp_path / "aoi.gpkg")
    exp = load_experiment(
        experiment(tmp_path, [scene], tmp_path / "labels.gpkg", class_column="kind",
                   aoi=str(tmp_path / "aoi.gpkg")),
        check_inputs=False,
    )  # fmt: skip
    result = create_training_data(exp)
    store = store_arrays(exp.train.store)
    assert result["classes"] == ["headwall", "slump"]  # sorted: headwall 1, slump 2
    first = (store["col0"] == 6400) & (store["row0"] == 3200)
    tile = store["labels"][first][0]
    assert (tile[10:40, 10:50] > 0).all() and tile[25, 15] == 2
    assert (tile[20:30, 30:60] == 1).all()  # the later polygon wins where they overlap
    assert tile[45, 70] == 0
    assert (store["col0"] + 128 <= 6400 + 320).all()  # inside the AOI only
    bottom = store["labels"][(store["row0"] == 3200 + 192)]
    assert (bottom[:, 58:, :] == 255).all()  # rows 250+ are nodata
    with rasterio.open(scene) as src:
        assert src.nodata == 0

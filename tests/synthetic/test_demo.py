"""The demo's generated scene and reference polygons, the committed demo model, the U-Net."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.features import rasterize
from shapely.geometry import box

from deepseg.config import load_experiment
from deepseg.model.loading import load_model
from deepseg.model.unet import DeepSegUNet, build_unet
from deepseg.synthetic.demo import (
    CHUNK_PX,
    DEMO_SEED,
    GENERATOR_VERSION,
    NODATA_COLS,
    SCENE_TAG,
    ensure_demo,
    make_scene,
)
from deepseg.synthetic.scenes import render_scene
from deepseg.synthetic.training import predict_scene

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "data" / "demo" / "model"
ORIGIN_X, ORIGIN_Y, RES_M = -4000100.0, 4100100.0, 3.0
SMALL = dict(width=512, height=384, giants=0)


def read_scene(folder: Path, **size: int) -> tuple[np.ndarray, rasterio.Affine, gpd.GeoDataFrame]:
    """Make a scene in ``folder``; return its pixels, transform and reference polygons."""
    make_scene(folder / "scene.tif", folder / "reference.gpkg", **size)
    with rasterio.open(folder / "scene.tif") as src:
        assert src.crs.to_epsg() == 3413
        assert (src.nodata, src.dtypes, src.descriptions) == (
            0,
            ("uint8",) * 3,
            ("red", "green", "blue"),
        )
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)] * 3
        assert src.compression.name == "lzw"
        pixels, transform = src.read(), src.transform
    return pixels, transform, gpd.read_file(folder / "reference.gpkg", layer="reference")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def full_scene(demo_folder: Path):
    return read_scene(demo_folder)


def test_scene_is_deterministic(tmp_path: Path) -> None:
    a, _, ref_a = read_scene(tmp_path / "a", **SMALL)
    b, _, ref_b = read_scene(tmp_path / "b", **SMALL)
    c, _, _ = read_scene(tmp_path / "c", seed=8, **SMALL)
    assert hashlib.sha256(a.tobytes()).hexdigest() == hashlib.sha256(b.tobytes()).hexdigest()
    assert ref_a.geometry.to_wkb().tolist() == ref_b.geometry.to_wkb().tolist()
    assert not np.array_equal(a, c)


def test_scene_geometry(full_scene) -> None:
    pixels, transform, _ = full_scene
    assert pixels.shape == (3, 2560, 3072)
    assert (transform.a, transform.b, transform.d, transform.e) == (RES_M, 0, 0, -RES_M)
    col, row = (transform.c - ORIGIN_X) / RES_M, (ORIGIN_Y - transform.f) / RES_M
    assert col == int(col) and row == int(row)
    # chunk borders of the demo (1024 px cores) fall on scene columns/rows 1024 and 2048
    assert col % CHUNK_PX == 0 and row % CHUNK_PX == 0
    x, y = transform.c, transform.f
    assert -2_300_000 < x < -2_100_000 and 0 < y < 200_000


def test_scene_nodata(full_scene) -> None:
    pixels, _, _ = full_scene
    assert not pixels[:, :, -NODATA_COLS:].any()
    assert pixels[:, :, :-NODATA_COLS].min() >= 1


def test_reference_polygons(full_scene) -> None:
    pixels, transform, ref = full_scene
    assert ref.crs.to_epsg() == 3413 and 30 <= len(ref) <= 50
    assert ref["rts_id"].tolist() == list(range(1, len(ref) + 1))
    assert ref.is_valid.all()
    x0, y0 = transform.c, transform.f
    valid_box = box(x0, y0 - 2560 * RES_M, x0 + (3072 - NODATA_COLS) * RES_M, y0)
    assert ref.within(valid_box).all()
    b = ref.bounds
    cols = ((b.minx - x0) / RES_M, (b.maxx - x0) / RES_M)
    rows = ((y0 - b.maxy) / RES_M, (y0 - b.miny) / RES_M)
    assert ((cols[0] < 1024) & (cols[1] > 1024)).any()  # slumps across chunk borders
    assert ((rows[0] < 1024) & (rows[1] > 1024)).any()
    assert (np.maximum(cols[1] - cols[0], rows[1] - rows[0]) > 512).sum() == 2  # the giants
    area_px = ref.area / RES_M**2
    assert area_px.min() < 100 and 300 < area_px.median() < 1500
    # the polygons are where the generator painted its slumps (an independent georeference)
    scene = render_scene(3072, 2560, DEMO_SEED, giants=2, roads=2)
    assert np.array_equal(pixels, scene.pixels)
    burnt = rasterize(ref.geometry, out_shape=pixels.shape[1:], transform=transform)
    expected = rasterize(scene.slumps, out_shape=pixels.shape[1:])
    assert np.array_equal(burnt, expected)


def test_lookalikes_layer(full_scene, demo_folder: Path) -> None:
    _, _, ref = full_scene
    alike = gpd.read_file(demo_folder / "reference.gpkg", layer="lookalikes")
    assert alike.crs.to_epsg() == 3413
    assert set(alike["kind"]) == {"river_bar", "road", "gravel_pad"}
    assert (alike["kind"] == "road").sum() == 2
    assert not alike.intersects(ref.union_all()).any()


@pytest.mark.parametrize(
    ("cfg", "shape", "expected"),
    [
        ({}, (1, 3, 64, 64), (1, 1, 64, 64)),
        (
            {"in_channels": 4, "classes": 3, "base_channels": 8, "depth": 2, "other": 1},
            (2, 4, 20, 12),
            (2, 3, 20, 12),
        ),
    ],
)
def test_unet_shapes(cfg: dict, shape: tuple, expected: tuple) -> None:
    network = build_unet(cfg).eval()
    with torch.inference_mode():
        assert tuple(network(torch.randn(shape)).shape) == expected


def test_unet_rejects_indivisible_size() -> None:
    network = DeepSegUNet(depth=4).eval()
    with pytest.raises(ValueError, match=r"40 x 64 px must both be divisible by 2\*\*depth = 16"):
        network(torch.zeros(1, 3, 40, 64))


def test_unet_size() -> None:
    n_params = sum(p.numel() for p in DeepSegUNet().parameters())
    assert 500_000 < n_params < 2_000_000


def test_demo_model_folder() -> None:
    """The committed model: a trained deepseg-unet, a few MB, made from other scenes."""
    config = yaml.safe_load((DEMO_MODEL / "config.yaml").read_text())
    assert config["framework"] == "deepseg-unet" and config["classes"] == 1
    assert 0.05 <= config["threshold"] < 1
    training, validation = config["training"], config["validation"]
    seeds = range(training["scene_seed"], training["scene_seed"] + training["scenes"])
    assert DEMO_SEED not in seeds and DEMO_SEED != validation["seed"]
    assert validation["precision"] > 0.8
    stats = json.loads((DEMO_MODEL / "normalization_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 3 and min(stats["std"]) > 0
    model = load_model(DEMO_MODEL, bands=3, device="cpu")
    assert model.threshold == config["threshold"]
    assert sum(f.stat().st_size for f in DEMO_MODEL.iterdir()) < 3_000_000


def test_demo_model_finds_scars_and_ignores_lookalikes() -> None:
    """On a fresh scene (neither the demo's nor a training or validation one) the committed
    model flags most slump pixels, few others, and almost no look-alike pixels."""
    scene = render_scene(1024, 1024, 21, giants=1, roads=2)
    model = load_model(DEMO_MODEL, bands=3, device="cpu")
    prob = predict_scene(model, scene.pixels, load_experiment("demo", check_inputs=False), 4)
    flagged = (prob >= model.threshold) & scene.pixels.any(axis=0)
    slump = rasterize(scene.slumps, out_shape=prob.shape) > 0
    alike = rasterize([p for _, p in scene.lookalikes], out_shape=prob.shape) > 0
    precision, recall = (flagged & slump).sum() / flagged.sum(), flagged[slump].mean()
    # measured: precision 1.000, recall 0.753, no look-alike pixel (threshold 0.989)
    assert precision > 0.95 and recall > 0.7, (precision, recall)
    assert flagged[alike].mean() < 0.01


def test_a_scene_from_another_generator_version_is_remade(full_scene, demo_folder, tmp_path):
    demo = tmp_path / "data" / "demo"
    demo.mkdir(parents=True)
    for name in ("scene.tif", "reference.gpkg"):
        shutil.copy(demo_folder / name, demo / name)
    made = (demo / "scene.tif").stat().st_mtime_ns
    ensure_demo(tmp_path)
    assert (demo / "scene.tif").stat().st_mtime_ns == made  # current: kept
    with rasterio.open(demo / "scene.tif", "r+") as dst:
        dst.update_tags(**{SCENE_TAG: "generator 1"})  # as an older DeepSeg made it
    ensure_demo(tmp_path)
    with rasterio.open(demo / "scene.tif") as src:
        assert src.tags()[SCENE_TAG].startswith(f"generator {GENERATOR_VERSION}, 3072 x 2560")
        np.testing.assert_array_equal(src.read(), full_scene[0])  # remade, same seed


def test_training_scenes_as_files_carry_the_trainers_truth(tmp_path: Path) -> None:
    from rasterio.features import rasterize as burn

    from deepseg.synthetic.demo import make_training_scenes
    from deepseg.synthetic.training_data import TRAIN_ROADS, labelled_scene

    make_training_scenes(tmp_path, range(1000, 1002), 256)
    labels = gpd.read_file(tmp_path / "labels.gpkg")
    for i, seed in enumerate(range(1000, 1002)):
        truth = labelled_scene(256, seed, giants=i % 2, roads=TRAIN_ROADS)
        with rasterio.open(tmp_path / f"scene_{seed}.tif") as src:
            np.testing.assert_array_equal(src.read(), truth.pixels)
            t = src.transform
            assert ((t.c + 4000100) / 3) % 1 == 0 and ((4100100 - t.f) / 3) % 1 == 0
            burnt = burn(labels.geometry, (256, 256), transform=t) > 0
        np.testing.assert_array_equal(burnt, truth.truth)

"""The demo's generated scene, reference polygons and model folder, and the built-in U-Net."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.features import rasterize
from shapely.geometry import box

from deepseg.demo import CHUNK_PX, NODATA_COLS, make_scene
from deepseg.unet import DeepSegUNet, build_unet

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "data" / "demo" / "model"
ORIGIN_X, ORIGIN_Y, RES_M = -4000100.0, 4100100.0, 3.0
SMALL = dict(width=512, height=384)
# TorchScript is the demo model's deployment format; recent torch releases flag it as deprecated.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


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
def full_scene(tmp_path_factory: pytest.TempPathFactory):
    return read_scene(tmp_path_factory.mktemp("full"))


def test_scene_is_deterministic(tmp_path: Path) -> None:
    a, _, ref_a = read_scene(tmp_path / "a", **SMALL)
    b, _, ref_b = read_scene(tmp_path / "b", **SMALL)
    c, _, _ = read_scene(tmp_path / "c", seed=8, **SMALL)
    assert hashlib.sha256(a.tobytes()).hexdigest() == hashlib.sha256(b.tobytes()).hexdigest()
    assert ref_a.geometry.to_wkb().tolist() == ref_b.geometry.to_wkb().tolist()
    assert not np.array_equal(a, c)


def test_scene_geometry(full_scene) -> None:
    pixels, transform, _ = full_scene
    assert pixels.shape == (3, 2048, 2560)
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
    assert ref.crs.to_epsg() == 3413 and 12 <= len(ref) <= 20
    assert ref["rts_id"].tolist() == list(range(1, len(ref) + 1))
    assert ref.is_valid.all()
    x0, y0 = transform.c, transform.f
    valid_box = box(x0, y0 - 2048 * RES_M, x0 + (2560 - NODATA_COLS) * RES_M, y0)
    assert ref.within(valid_box).all()
    b = ref.bounds
    cols = ((b.minx - x0) / RES_M, (b.maxx - x0) / RES_M)
    rows = ((y0 - b.maxy) / RES_M, (y0 - b.miny) / RES_M)
    assert ((cols[0] < 1024) & (cols[1] > 1024)).any()
    assert ((rows[0] < 1024) & (rows[1] > 1024)).any()
    assert (cols[1] - cols[0]).max() > 300
    area_px = ref.area / RES_M**2
    assert area_px.min() < 150 and area_px.max() > 3000
    # the floors are the bright bare ground; nothing else is as bright
    floor = rasterize(ref.geometry, out_shape=pixels.shape[1:], transform=transform) > 0
    brightness = pixels.mean(axis=0)
    assert brightness[floor].mean() > 140
    assert np.percentile(brightness[~floor & (brightness > 0)], 99.9) < 110


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
    config = yaml.safe_load((DEMO_MODEL / "config.yaml").read_text())
    assert config["framework"] == "torchscript" and config["classes"] == 1
    assert config["model_version"] == "demo-deterministic-v1" and 0 < config["threshold"] < 1
    assert "NOT a trained network" in config["description"]
    stats = json.loads((DEMO_MODEL / "normalization_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 3 and min(stats["std"]) > 0
    network = torch.jit.load(str(DEMO_MODEL / "best_model.pth"))
    with torch.inference_mode():
        assert tuple(network(torch.zeros(2, 3, 64, 64)).shape) == (2, 1, 64, 64)
    assert sum(f.stat().st_size for f in DEMO_MODEL.iterdir()) < 300_000


def test_demo_model_finds_scars(tmp_path: Path) -> None:
    """On a fresh scene (not the one the stats came from) most floor pixels are flagged."""
    pixels, transform, ref = read_scene(tmp_path, seed=21, **SMALL)
    stats = json.loads((DEMO_MODEL / "normalization_stats.json").read_text())
    threshold = yaml.safe_load((DEMO_MODEL / "config.yaml").read_text())["threshold"]
    mean, std = (np.asarray(stats[k], np.float32)[:, None, None] for k in ("mean", "std"))
    valid = pixels.any(axis=0)
    x = np.where(valid, (pixels - mean) / std, 0).astype(np.float32)
    network = torch.jit.load(str(DEMO_MODEL / "best_model.pth"))
    with torch.inference_mode():
        prob = torch.sigmoid(network(torch.from_numpy(x)[None]))[0, 0].numpy()
    flagged = (prob > threshold) & valid
    floor = rasterize(ref.geometry, out_shape=pixels.shape[1:], transform=transform) > 0
    assert flagged[floor].mean() > 0.9
    assert flagged[valid & ~floor].mean() < 0.01

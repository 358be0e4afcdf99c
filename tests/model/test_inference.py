"""Inference rules with exact expectations: TTA undone, the built-in U-Net through predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from conftest import MEAN, STD, lattice_transform, write_experiment, write_model, write_raster
from deepseg.config import load_experiment
from deepseg.model.inference import predict_with_tta
from deepseg.model.loading import load_model
from deepseg.model.unet import DeepSegUNet
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles


class Ramp(torch.nn.Module):
    """Not flip-invariant: logit = channel 0 + 2 * col / W - 3 * row / H (pixel centres)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        cols = torch.arange(w, dtype=x.dtype) / w
        rows = torch.arange(h, dtype=x.dtype) / h
        return x[:, 0:1] + 2 * cols[None, None, None, :] - 3 * rows[None, None, :, None]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("tta", ["none", "minimal", "standard"])
def test_tta_is_undone_on_each_prediction(tmp_path: Path, tta: str) -> None:
    model = load_model(write_model(tmp_path / "m", Ramp()), bands=3, device="cpu")
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    prob = predict_with_tta(model, x, tta, "fp32").numpy()
    h, w = 24, 40
    i, j = np.mgrid[0:h, 0:w].astype(np.float64)
    x0 = x[:, 0].double().numpy()
    # each transform t: the model sees t(x) at t(i, j), so un-transformed its ramp is read at
    # the mirrored position
    ramps = {
        "identity": 2 * j / w - 3 * i / h,
        "hflip": 2 * (w - 1 - j) / w - 3 * i / h,
        "vflip": 2 * j / w - 3 * (h - 1 - i) / h,
        "rot180": 2 * (w - 1 - j) / w - 3 * (h - 1 - i) / h,
    }
    used = {"none": ["identity"], "minimal": ["identity", "hflip"]}.get(tta, list(ramps))
    expected = np.mean([_sigmoid(x0 + ramps[k]) for k in used], axis=0)
    np.testing.assert_allclose(prob, expected, rtol=0, atol=2e-7)


def test_builtin_unet_through_predict_equals_direct_application(tmp_path: Path) -> None:
    """With stride = tile size every pixel has one tile: the merged raster must equal the
    network applied to that tile alone (deepseg-unet weights loaded from a state_dict)."""
    torch.manual_seed(0)
    network = DeepSegUNet(base_channels=4, depth=2).eval()
    folder = tmp_path / "unet"
    folder.mkdir()
    torch.save(network.state_dict(), folder / "best_model.pth")
    (folder / "normalization_stats.json").write_text(json.dumps({"mean": MEAN, "std": STD}))
    config = {"framework": "deepseg-unet", "threshold": 0.5, "base_channels": 4, "depth": 2}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    at = (32 * 40 + 7, 32 * 50 + 19)  # grid (col, row) of the raster's pixel (0, 0)
    rng = np.random.default_rng(5)
    data = rng.integers(1, 256, size=(3, 90, 110), dtype=np.uint8)
    scene = write_raster(tmp_path / "scene.tif", data, lattice_transform(*at))
    grid = {"tile_size": 32, "stride": 32, "chunk_tiles": 2}
    exp = load_experiment(write_experiment(tmp_path, [scene], folder, grid=grid))
    create_tiles(exp)
    predict(exp)
    merge(exp)
    with rasterio.open(tmp_path / "out" / "merged" / "all_prob.tif") as src:
        merged = src.read(1)
        assert src.transform == lattice_transform(*at)
    # independent expectation: pad the raster onto the 32 px tile lattice, predict each tile
    c0, r0 = at[0] % 32, at[1] % 32
    h, w = -(-(r0 + 90) // 32) * 32, -(-(c0 + 110) // 32) * 32
    x = np.zeros((3, h, w), dtype=np.float32)
    norm = (data.astype(np.float32) - np.array(MEAN, np.float32)[:, None, None]) / np.array(
        STD, np.float32
    )[:, None, None]
    x[:, r0 : r0 + 90, c0 : c0 + 110] = norm
    tiles = torch.from_numpy(x).unfold(1, 32, 32).unfold(2, 32, 32)  # 3, nr, nc, 32, 32
    nr, nc = tiles.shape[1:3]
    batch = tiles.permute(1, 2, 0, 3, 4).reshape(nr * nc, 3, 32, 32)
    with torch.inference_mode():
        prob = torch.sigmoid(network(batch))[:, 0].reshape(nr, nc, 32, 32)
    expected = prob.permute(0, 2, 1, 3).reshape(h, w).numpy()[r0 : r0 + 90, c0 : c0 + 110]
    np.testing.assert_allclose(merged, expected, rtol=0, atol=1e-5)

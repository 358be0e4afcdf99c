"""ONNX model folders: exact logits, fixed sizes, refusals, and the real pretrained U-Net of
ukis-csmask against a direct onnxruntime run."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from conftest import MEAN, STD, lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.model.inference import normalize, probabilities
from deepseg.model.loading import load_model
from deepseg.model.unet import DeepSegUNet
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from model_folders import (
    known_conv,
    known_logits,
    model_folder,
    onnx_bytes,
    quarter_steps,
    refused,
    torchscript_bytes,
)


def test_onnx_gives_the_exact_logits_of_the_exported_network(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    folder = model_folder(tmp_path / "m", "onnx", onnx_bytes(known_conv(3), (1, 3, 8, 8)))
    model = load_model(folder, bands=3, device="cpu", tile_size=64)
    assert model.classes == 3
    x = quarter_steps(5, 3, 24, 40)
    with torch.inference_mode():
        logits = model.network(x)
    assert logits.dtype == torch.float32 and logits.device == x.device
    np.testing.assert_array_equal(logits.numpy(), known_logits(x.numpy(), 3).astype(np.float32))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the size check is traced
def test_onnx_unet_matches_torch(tmp_path):
    """A real encoder/decoder graph (BatchNorm, pooling, bilinear upsampling, concatenation)
    gives torch's logits through ONNX Runtime, to float32 rounding."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    torch.manual_seed(5)
    network = DeepSegUNet(in_channels=3, classes=2, base_channels=4, depth=2).eval()
    folder = model_folder(tmp_path / "m", "onnx", onnx_bytes(network, (1, 3, 16, 16)))
    model = load_model(folder, bands=3, device="cpu")
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        np.testing.assert_allclose(model.network(x), network(x), rtol=0, atol=1e-6)


def test_onnx_fixed_sizes_are_served_or_refused_by_name(tmp_path):
    """A graph exported with fixed batch 2 and 16 x 16 px: a batch of 3 is split and padded;
    other tile sizes or band counts are refused with both sizes named."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    weights = onnx_bytes(known_conv(1), (2, 3, 16, 16), dynamic=False)
    folder = model_folder(tmp_path / "m", "onnx", weights)
    model = load_model(folder, bands=3, device="cpu")  # probed at the graph's own 16 px
    x = quarter_steps(3, 3, 16, 16)
    with torch.inference_mode():
        logits = model.network(x).numpy()
    np.testing.assert_array_equal(logits, known_logits(x.numpy()).astype(np.float32))
    pth = str(folder / "best_model.pth")
    refused(
        lambda: model.network(torch.zeros(1, 3, 32, 32)),
        pth,
        "takes 2 x 3 x 16 x 16 input, got 1 x 3 x 32 x 32",
        "grid.tile_size: 16",
    )
    refused(lambda: load_model(folder, 3, "cpu", tile_size=512), pth, "grid.tile_size: 16")
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4}
    folder4 = model_folder(tmp_path / "m4", "onnx", weights, stats)
    refused(lambda: load_model(folder4, 4, "cpu"), "got 1 x 4 x 16 x 16; set input.bands")


class TwoInputs(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def test_onnx_files_it_cannot_run_are_refused_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(TwoInputs(), (torch.zeros(1, 3, 4, 4),) * 2, buffer, dynamo=False)
    cases = {
        "two": (buffer.getvalue(), "expected an ONNX model with one N x C x H x W float input"),
        "bad": (torchscript_bytes(known_conv(1)), "ONNX Runtime cannot load it ("),
    }
    for name, (weights, fragment) in cases.items():
        folder = model_folder(tmp_path / name, "onnx", weights)
        refused(lambda f=folder: load_model(f, 3, "cpu"), str(folder / "best_model.pth"), fragment)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if absent
    refused(lambda: load_model(folder, 3, "cpu"), "pip install 'deepseg[onnx]'")


def test_onnx_model_through_predict_equals_the_pixelwise_model(tmp_path):
    """The ONNX runtime inside the predict stage: a pixelwise model's merged probability is
    sigmoid(logit) of each pixel's own normalized value, whatever tiles cover it."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    folder = model_folder(tmp_path / "m", "onnx", onnx_bytes(known_conv(1), (1, 3, 8, 8)))
    at = (32 * 20 + 5, 32 * 30 + 11)
    data = np.random.default_rng(8).integers(1, 256, size=(3, 70, 90), dtype=np.uint8)
    data[:, :10, :15] = 0  # nodata
    scene = write_raster(tmp_path / "scene.tif", data, lattice_transform(*at))
    exp = load_experiment(write_experiment(tmp_path, [scene], folder))
    create_tiles(exp)
    predict(exp)
    merge(exp)
    with rasterio.open(tmp_path / "out" / "merged" / "all_prob.tif") as src:
        merged = src.read(1, window=((0, 70), (0, 90)))
    norm = (data - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    expected = 1 / (1 + np.exp(-known_logits(norm[None])[0, 0]))
    expected[(data == 0).all(axis=0)] = -1
    np.testing.assert_allclose(merged, expected, rtol=0, atol=2e-6)


# ---- the real pretrained model of ukis-csmask ------------------------------------------------
def ukis_model(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A model folder around ukis-csmask's 4-band L2A cloud U-Net (its ONNX file linked as
    best_model.pth, its statistics as normalization_stats.json), the ONNX file and its card."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    spec = importlib.util.find_spec("ukis_csmask")  # not imported: it needs scipy
    if spec is None:
        pytest.skip("ukis-csmask is not installed (pip install -e '.[realmodel]')")
    package = Path(spec.submodule_search_locations[0])
    onnx_file = package / "model_4b_l2a.onnx"
    card = json.loads((package / "model_4b_l2a.json").read_text())
    mean, std = card["data"]["dataset_statistics"]["img"]
    version = card["model"]["version"]
    folder = model_folder(
        tmp_path / "ukis",
        "onnx",
        b"",
        {"mean": mean, "std": std, "data_version": version},
        classes=3,
        positive_class=1,
    )
    (folder / "best_model.pth").unlink()
    (folder / "best_model.pth").symlink_to(onnx_file)
    return folder, onnx_file, card


def test_real_ukis_unet_matches_a_direct_onnxruntime_run(tmp_path):
    import onnxruntime

    folder, onnx_file, card = ukis_model(tmp_path)
    model = load_model(
        folder, bands=4, device="cpu", tile_size=256, expected_data_version="1.0.0-4BL2A"
    )
    assert model.classes == 3
    rng = np.random.default_rng(9)
    reflectance = rng.uniform(0.0, 0.6, size=(4, 256, 256)).astype(np.float32)
    reflectance[:, 100:180, 60:200] = 0.9  # a bright, cloud-like block
    mean, std = (
        np.array(v, np.float32)[:, None, None] for v in card["data"]["dataset_statistics"]["img"]
    )
    tile = normalize(reflectance, np.ones((256, 256), bool), model)
    np.testing.assert_array_equal(tile.numpy(), (reflectance - mean) / std)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"input": tile.numpy()[None]})[0]
    with torch.inference_mode():
        logits = model.network(tile[None]).numpy()
    np.testing.assert_allclose(logits, direct, rtol=0, atol=1e-6)
    # class 1 (cloud) through the engine's softmax
    soft = np.exp(direct - direct.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    prob = probabilities(model, tile[None], "fp32").numpy()
    np.testing.assert_allclose(prob, soft[:, 1], rtol=0, atol=1e-6)
    assert prob[0, 100:180, 60:200].mean() > 0.5 > prob[0, :60].mean()
    refused(
        lambda: load_model(folder, bands=4, device="cpu", tile_size=512),
        "takes N x 4 x 256 x 256 input, got 1 x 4 x 512 x 512",
        "grid.tile_size: 256",
    )

"""Model folders in every format: exact logits for known inputs, the class and data checks,
and one-line errors naming the file at fault."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from conftest import MEAN, STD, lattice_transform, write_experiment, write_raster
from deepseg.config import ConfigError, load_experiment
from deepseg.errors import DeepSegError
from deepseg.frameworks import read_darts_checkpoint
from deepseg.inference import normalize, probabilities
from deepseg.model import load_model, read_model_card
from deepseg.mosaic import merge
from deepseg.predicting import predict
from deepseg.tiling import create_tiles
from deepseg.unet import DeepSegUNet

# Weights and inputs are small multiples of 1/4, so every product and sum of a 1x1
# convolution is exact in float32, whatever the summation order of the runtime.
KNOWN_WEIGHTS = [[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.0, 2.0]]
KNOWN_BIAS = [0.25, -1.0, 0.5]


def known_conv(classes: int = 1) -> torch.nn.Conv2d:
    """A 1x1 convolution 3 -> ``classes`` channels with the weights above."""
    conv = torch.nn.Conv2d(3, classes, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(KNOWN_WEIGHTS[:classes])[:, :, None, None])
        conv.bias.copy_(torch.tensor(KNOWN_BIAS[:classes]))
    return conv.eval()


def known_logits(x: np.ndarray, classes: int = 1) -> np.ndarray:
    """The logits of ``known_conv(classes)`` for (N, 3, H, W) input, computed in float64."""
    w = np.array(KNOWN_WEIGHTS[:classes])
    b = np.array(KNOWN_BIAS[:classes])
    return np.einsum("kc,nchw->nkhw", w, x.astype(np.float64)) + b[None, :, None, None]


def quarter_steps(*shape: int, seed: int = 0) -> torch.Tensor:
    """Float32 input of multiples of 1/4 in [-8, 8]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.integers(-32, 33, size=shape) / 4).astype(np.float32))


def model_folder(
    folder: Path,
    framework: str,
    weights: bytes,
    stats: dict | None = None,
    **config: object,
) -> Path:
    """A model folder with ``weights`` as best_model.pth and config.yaml keys ``config``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best_model.pth").write_bytes(weights)
    stats = stats or {"mean": MEAN, "std": STD, "data_version": "planet-2024"}
    (folder / "normalization_stats.json").write_text(json.dumps(stats))
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"framework": framework, "threshold": 0.5, **config})
    )
    return folder


def torchscript_bytes(network: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    return buffer.getvalue()


def onnx_bytes(network: torch.nn.Module, shape: tuple[int, ...], dynamic: bool = True) -> bytes:
    """``network`` exported by torch's TorchScript-based ONNX exporter (the dynamo one takes
    ~12 s per model here); ``dynamic`` leaves batch and spatial sizes free."""
    buffer = io.BytesIO()
    axes = {"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network, (torch.zeros(shape),), buffer, dynamo=False, input_names=["x"],
            output_names=["logits"], dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue()


def refused(call, *fragments: str) -> str:
    """Run ``call``; it must raise a one-line DeepSegError holding every fragment."""
    with pytest.raises(DeepSegError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- one format at a time: the logits of a known input --------------------------------------
def test_torchscript_gives_the_exact_logits(tmp_path):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(1)))
    model = load_model(folder, bands=3, device="cpu")
    x = quarter_steps(2, 3, 8, 12)
    with torch.inference_mode():
        logits = model.network(x).numpy()
    np.testing.assert_array_equal(logits, known_logits(x.numpy()).astype(np.float32))
    assert model.classes == 1


@pytest.mark.parametrize("wrapped", [False, True])
def test_deepseg_unet_gives_the_saved_networks_logits(tmp_path, wrapped):
    torch.manual_seed(3)
    network = DeepSegUNet(base_channels=4, depth=2)
    network.train()(torch.randn(4, 3, 16, 16))  # moves BatchNorm's running statistics
    network.eval()
    state = {"state_dict": network.state_dict()} if wrapped else network.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder = model_folder(
        tmp_path / "m", "deepseg-unet", buffer.getvalue(), base_channels=4, depth=2, classes=1
    )
    model = load_model(folder, bands=3, device="cpu")
    x = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(model.network(x), network(x))


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


# ---- DARTS-layout checkpoints (framework smp) ------------------------------------------------
# Key names and shapes as segmentation-models-pytorch 0.6 names them for a Unet whose encoder
# has in_channels 3; only the keys' layout matters to reading the checkpoint.
SMP_STATE = {
    "encoder._conv_stem.weight": torch.arange(32 * 3 * 3 * 3, dtype=torch.float32).reshape(
        32, 3, 3, 3
    ),
    "encoder._bn0.running_mean": torch.linspace(-1, 1, 32),
    "decoder.blocks.0.conv1.0.weight": torch.ones(16, 48, 3, 3),
    "segmentation_head.0.weight": torch.full((1, 4, 3, 3), 0.5),
    "segmentation_head.0.bias": torch.tensor([0.25]),
}
SMP_ARGS = {"arch": "Unet", "encoder_name": "efficientnet-b0", "in_channels": 3, "classes": 1}


def state_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def darts_checkpoint(layout: str, state: dict = SMP_STATE, **config: object) -> bytes:
    """A checkpoint as darts-segmentation writes it: its own layout or Lightning's."""
    model = {**SMP_ARGS, "encoder_weights": "imagenet"}
    full = {"model": model, "bands": ["red", "green", "blue"], "model_framework": "smp"}
    full.update(config)
    if layout == "darts":
        checkpoint = {"config": full, "statedict": state}
    else:
        del full["model_framework"]  # Lightning checkpoints do not carry it
        prefixed = {f"model.{k}": v for k, v in state.items()}
        checkpoint = {"hyper_parameters": {"config": full}, "state_dict": prefixed, "epoch": 7}
    return state_bytes(checkpoint)


@pytest.mark.parametrize("layout", ["darts", "lightning"])
def test_darts_checkpoint_gives_smp_arguments_and_state(tmp_path, layout):
    path = tmp_path / "best_model.pth"
    path.write_bytes(darts_checkpoint(layout))
    arguments, state = read_darts_checkpoint(path)
    assert arguments == {**SMP_ARGS, "encoder_weights": None}
    assert list(state) == list(SMP_STATE)
    assert all(torch.equal(state[k], v) for k, v in SMP_STATE.items())


class Pickled:
    """Not a plain value: torch.load(weights_only=True) refuses it."""


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (darts_checkpoint("darts", model_framework="tf"), "model_framework is 'tf'"),
        (darts_checkpoint("darts", model={"encoder_name": "x"}), "config.model has no 'arch'"),
        (darts_checkpoint("darts", model=None), "config has no 'model' mapping"),
        (state_bytes(SMP_STATE), "got a dict with keys encoder._conv_stem.weight, enc"),
        (state_bytes([1.0, 2.0]), "or a Lightning one with 'hyper_parameters' and 'state_dict'"),
    ],
)
def test_bad_darts_checkpoints_are_refused_in_one_line(tmp_path, weights, fragment):
    folder = model_folder(tmp_path / "m", "smp", weights)
    refused(lambda: load_model(folder, 3, "cpu"), str(folder / "best_model.pth"), fragment)


def test_pickled_objects_are_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"config": {"model": Pickled()}, "statedict": {}}, buffer)
    folder = model_folder(tmp_path / "m", "smp", buffer.getvalue())
    refused(lambda: load_model(folder, 3, "cpu"), "weights_only=True", "Pickled")


def test_smp_missing_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # as if absent
    folder = model_folder(tmp_path / "m", "smp", darts_checkpoint("darts"))
    refused(lambda: load_model(folder, 3, "cpu"), str(folder), "pip install 'deepseg[smp]'")


@pytest.mark.parametrize("layout", ["darts", "lightning"])
def test_smp_network_from_a_darts_checkpoint_gives_its_logits(tmp_path, layout):
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the smp extra is absent")
    torch.manual_seed(7)
    shape = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    network = smp.create_model(**SMP_ARGS, **shape, encoder_weights=None).eval()
    config = {"model": {**SMP_ARGS, **shape}}
    folder = model_folder(
        tmp_path / "m", "smp", darts_checkpoint(layout, network.state_dict(), **config)
    )
    model = load_model(folder, bands=3, device="cpu", tile_size=64)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        assert torch.equal(model.network(x), network(x))


# ---- what the folder says about classes and data ---------------------------------------------
def test_positive_class_of_a_multiclass_model_is_read_through_softmax(tmp_path):
    weights = torchscript_bytes(known_conv(3))
    folder = model_folder(tmp_path / "m", "torchscript", weights, classes=3, positive_class=2)
    model = load_model(folder, bands=3, device="cpu")
    x = quarter_steps(2, 3, 8, 8)
    z = known_logits(x.numpy(), 3)
    expected = np.exp(z[:, 2]) / np.exp(z).sum(axis=1)
    prob = probabilities(model, x, "fp32").numpy()
    np.testing.assert_allclose(prob, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"classes": 3, "positive_class": 3}, "positive_class: 3 is not a class of this 3-class"),
        ({"classes": 2}, "classes: 2, but the network returns 3"),
        ({"positive_class": -1}, "positive_class: expected an integer >= 0, got -1"),
        ({"positive_class": True}, "positive_class: expected an integer >= 0, got True"),
        ({"classes": "three"}, "classes: expected an integer >= 1, got 'three'"),
    ],
)
def test_class_keys_are_checked_against_the_network(tmp_path, config, fragment):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(3)), **config)
    refused(lambda: load_model(folder, 3, "cpu"), str(folder / "config.yaml"), fragment)


class Halving(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, ::2, ::2]


class Failing(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 7)


@pytest.mark.parametrize(
    ("network", "fragment"),
    [
        (Halving(), "expected N x K x H x W logits, got (1, 1, 256, 256) for a 1 x 3 x 512 x 512"),
        (Failing(), "the network fails on a 1 x 3 x 512 x 512 tile ("),
    ],
)
def test_network_breaking_the_contract_is_refused_at_load(tmp_path, network, fragment):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(network))
    refused(lambda: load_model(folder, 3, "cpu"), str(folder / "best_model.pth"), fragment)


def test_positive_class_is_ignored_for_a_binary_model(tmp_path):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(1)))
    assert load_model(folder, 3, "cpu").positive_class == 1  # the default, unused by sigmoid


def test_normalization_uses_the_folders_statistics(tmp_path, caplog):
    stats = {"mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 8.0], "data_version": "v7"}
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(1)), stats)
    with caplog.at_level(logging.INFO, logger="deepseg.model"):
        model = load_model(folder, 3, "cpu")
    md5 = hashlib.md5((folder / "normalization_stats.json").read_bytes()).hexdigest()
    assert f"stats MD5 {md5}" in caplog.text and model.stats_md5 == md5
    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 5, 6)).astype(np.uint8)
    valid = np.ones((5, 6), bool)
    valid[0, 0] = False
    expected = (pixels.astype(np.float32) - np.float32([[[10]], [[20]], [[30]]])) / np.float32(
        [[[2]], [[4]], [[8]]]
    )
    expected[:, 0, 0] = 0
    np.testing.assert_array_equal(normalize(pixels, valid, model).numpy(), expected)
    refused(
        lambda: read_model_card(folder, bands=4),
        str(folder / "normalization_stats.json"),
        "3 mean / 3 std values but input.bands selects 4",
    )


def test_expected_data_version_is_checked(tmp_path):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(1)))
    assert read_model_card(folder, 3).data_version == "planet-2024"
    assert read_model_card(folder, 3, expected_data_version="planet-2024").data_version
    refused(
        lambda: read_model_card(folder, 3, expected_data_version="planet-2025"),
        str(folder / "normalization_stats.json"),
        "data_version is 'planet-2024' but model.expected_data_version is 'planet-2025'",
    )
    bare = model_folder(
        tmp_path / "bare", "torchscript", b"", {"mean": MEAN, "std": STD}
    )  # no data_version: nothing to compare with
    refused(
        lambda: load_model(bare, 3, "cpu", expected_data_version="planet-2024"),
        "data_version is None but model.expected_data_version is 'planet-2024'",
    )


def test_expected_data_version_is_an_experiment_key(tmp_path):
    folder = model_folder(tmp_path / "m", "torchscript", torchscript_bytes(known_conv(1)))
    raster = write_raster(tmp_path / "s.tif", np.ones((3, 8, 8), np.uint8), lattice_transform(0, 0))
    path = write_experiment(tmp_path, [raster], folder)
    assert load_experiment(path).model.expected_data_version is None
    raw = yaml.safe_load(path.read_text())
    for value in ("planet-2024", 2024):
        raw["model"]["expected_data_version"] = value
        path.write_text(yaml.safe_dump(raw))
        if isinstance(value, str):
            exp = load_experiment(path)
            assert exp.model.expected_data_version == value and exp.model.dir == folder
            continue
        with pytest.raises(ConfigError, match=r"model\.expected_data_version: expected a string"):
            load_experiment(path)

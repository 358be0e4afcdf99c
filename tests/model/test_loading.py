"""Model folders: exact logits of TorchScript and the built-in U-Net, the class and data
checks, and one-line errors naming the file at fault."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pytest
import torch
import yaml

from conftest import MEAN, STD, lattice_transform, write_experiment, write_raster
from deepseg.config import ConfigError, load_experiment
from deepseg.model.card import read_model_card
from deepseg.model.inference import normalize, probabilities
from deepseg.model.loading import load_model
from deepseg.model.unet import DeepSegUNet
from model_folders import (
    known_conv,
    known_logits,
    model_folder,
    quarter_steps,
    refused,
    torchscript_bytes,
)


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


def test_named_classes_make_a_k_class_model_with_every_probability(tmp_path):
    weights = torchscript_bytes(known_conv(3))
    classes = [{"water": "#0000ff"}, {"land": [0, 128, 0]}, "ice"]
    folder = model_folder(tmp_path / "m", "torchscript", weights, classes=classes)
    model = load_model(folder, bands=3, device="cpu")
    assert model.card.class_table.names == ("water", "land", "ice")
    assert model.card.class_table.colours == ((0, 0, 255), (0, 128, 0), (44, 160, 44))
    x = quarter_steps(2, 3, 8, 8)
    z = known_logits(x.numpy(), 3)
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities(model, x, "fp32").numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"classes": 3, "positive_class": 3}, "positive_class: 3 is not a class of this 3-class"),
        ({"classes": 2}, "classes: 2, but the network returns 3"),
        ({"positive_class": -1}, "positive_class: expected an integer >= 0, got -1"),
        ({"positive_class": True}, "positive_class: expected an integer >= 0, got True"),
        ({"classes": "three"}, "classes: expected an integer >= 1 or a list of class names"),
        ({"classes": ["a", "b"]}, "classes: 2 class names, but the network returns 3 channels"),
        ({"classes": ["a", "b", "c"], "positive_class": 2}, "with class names every class is"),
        ({"classes": ["a", "b", "a"]}, "classes: a class name is given twice"),
        ({"classes": ["a"]}, "classes: expected 2 to 254 class names, got 1"),
        ({"classes": ["a", "", "c"]}, "classes: expected non-empty class names"),
        ({"classes": [{"a": "#12345"}, "b", "c"]}, "classes.a: expected a colour as"),
        ({"classes": [{"a": [1, 2, 256]}, "b", "c"]}, "got [1, 2, 256]"),
        ({"classes": [{"a": None, "b": None}, "c"]}, "expected a name or a one-key mapping"),
        ({"classes": {"a": None, "b": None, "c": None}}, "got a mapping (its order is not kept"),
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
    with caplog.at_level(logging.INFO, logger="deepseg.model.loading"):
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

"""DARTS-layout checkpoints (framework smp): the arguments and state read from them, the
checkpoints refused, and the network built with segmentation-models-pytorch."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from deepseg.model.frameworks import read_darts_checkpoint
from deepseg.model.loading import load_model
from model_folders import (
    model_folder,
    refused,
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

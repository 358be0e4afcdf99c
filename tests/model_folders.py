"""Model folders for the model tests: known networks with exactly computable logits, the
formats' bytes (TorchScript, ONNX) and the one-line-refusal check."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import MEAN, STD
from deepseg.core.errors import DeepSegError

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

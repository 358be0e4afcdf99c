"""Loading a model folder: weights, normalization statistics and its ``config.yaml``.

A model folder holds ``best_model.pth`` (the weights), ``normalization_stats.json``
(per-channel ``mean`` and ``std`` in input pixel units, and the training ``data_version``) and
``config.yaml`` (``framework:`` naming the architecture, the calibrated ``threshold``, and the
architecture's own keys). ``framework`` chooses a loader from ``FRAMEWORKS``:

- ``torchscript``: ``best_model.pth`` is a TorchScript archive;
- ``deepseg-unet``: the built-in U-Net (``unet.DeepSegUNet``); ``best_model.pth`` is its
  ``state_dict`` (or a dict holding it under ``state_dict``).

Every model takes N x C x H x W float32 normalized input, ``x = (x - mean[c]) / std[c]``, and
returns N x 1 x H x W logits (binary, sigmoid) or N x K x H x W logits (K classes, softmax).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import DeepSegError

log = logging.getLogger(__name__)

WEIGHTS, STATS, CONFIG = "best_model.pth", "normalization_stats.json", "config.yaml"


@dataclass
class LoadedModel:
    """A model ready for inference, with what it needs to be fed and read."""

    network: torch.nn.Module
    framework: str
    threshold: float  # calibrated probability threshold from config.yaml
    mean: np.ndarray  # float32 (C,), input pixel units
    std: np.ndarray  # float32 (C,)
    positive_class: int  # for K-class models: the class whose probability is mapped
    config: dict[str, Any]
    stats_md5: str  # MD5 of normalization_stats.json, for the run log
    device: torch.device


def _load_torchscript(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    with warnings.catch_warnings():  # the user chose TorchScript; torch>=2.9 calls it deprecated
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated")
        return torch.jit.load(str(weights), map_location="cpu")


def _load_deepseg_unet(weights: Path, config: dict[str, Any]) -> torch.nn.Module:
    from .unet import build_unet

    network = build_unet(config)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    network.load_state_dict(state)
    return network


FRAMEWORKS: dict[str, Callable[[Path, dict[str, Any]], torch.nn.Module]] = {
    "torchscript": _load_torchscript,
    "deepseg-unet": _load_deepseg_unet,
}


def choose_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeepSegError("inference.device: cuda was asked for but no CUDA GPU is visible")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DeepSegError(f"{path}: cannot read the model config ({exc})") from exc
    if not isinstance(data, dict):
        raise DeepSegError(f"{path}: expected a mapping of keys (framework:, threshold:, ...)")
    return data


def _read_stats(path: Path, bands: int) -> tuple[np.ndarray, np.ndarray, str]:
    raw = path.read_bytes()
    try:
        stats = json.loads(raw)
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        raise DeepSegError(f"{path}: expected JSON with 'mean' and 'std' lists ({exc})") from exc
    if mean.shape != (bands,) or std.shape != (bands,):
        raise DeepSegError(
            f"{path}: has {mean.size} mean / {std.size} std values but input.bands selects "
            f"{bands} band(s); the model was trained on a different channel count"
        )
    if not np.all(std > 0):
        raise DeepSegError(f"{path}: every std must be > 0, got {std.tolist()}")
    return mean, std, hashlib.md5(raw).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A model folder's description, checked, without loading the weights."""

    folder: Path
    framework: str
    threshold: float  # calibrated probability threshold from config.yaml
    mean: np.ndarray  # float32 (C,), input pixel units
    std: np.ndarray  # float32 (C,)
    stats_md5: str  # MD5 of normalization_stats.json, for the run log
    config: dict[str, Any]


def read_model_card(model_dir: Path, bands: int) -> ModelCard:
    """Check ``config.yaml`` and the statistics of a model for ``bands`` input channels."""
    config = _read_yaml(model_dir / CONFIG)
    framework = config.get("framework")
    if framework not in FRAMEWORKS:
        raise DeepSegError(
            f"{model_dir / CONFIG}: framework: expected one of {sorted(FRAMEWORKS)}, "
            f"got {framework!r}"
        )
    threshold = config.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise DeepSegError(f"{model_dir / CONFIG}: threshold: expected a number in [0, 1]")
    mean, std, md5 = _read_stats(model_dir / STATS, bands)
    return ModelCard(model_dir, framework, float(threshold), mean, std, md5, config)


def load_model(model_dir: Path, bands: int, device: str = "auto") -> LoadedModel:
    """Load the model folder for input with ``bands`` channels onto ``device``."""
    card = read_model_card(model_dir, bands)
    try:
        network = FRAMEWORKS[card.framework](model_dir / WEIGHTS, card.config)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise DeepSegError(
            f"{model_dir / WEIGHTS}: cannot load {card.framework} weights ({exc})"
        ) from exc
    target = choose_device(device)
    network = network.to(target).eval()
    log.info(
        "model %s (%s) on %s, threshold %.3f, stats MD5 %s",
        model_dir,
        card.framework,
        target,
        card.threshold,
        card.stats_md5,
    )
    return LoadedModel(
        network,
        card.framework,
        card.threshold,
        card.mean,
        card.std,
        int(card.config.get("positive_class", 1)),
        card.config,
        card.stats_md5,
        target,
    )

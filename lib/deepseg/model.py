"""The model folder: its weights, normalization statistics and ``config.yaml``, checked.

A model folder holds ``best_model.pth`` (the weights, in the format ``framework:`` names),
``normalization_stats.json`` (per-channel ``mean`` and ``std`` in input pixel units, and the
training ``data_version``) and ``config.yaml``:

- ``framework``: ``torchscript``, ``deepseg-unet``, ``smp`` (DARTS-layout checkpoints) or
  ``onnx``; ``frameworks.FRAMEWORKS`` holds the loaders and describes each format;
- ``threshold``: the calibrated probability threshold in [0, 1];
- ``classes`` (optional): the network's output channels K, checked against its real output;
- ``positive_class`` (default 1): for K > 1, the class whose softmax probability is mapped;
- the architecture's own keys (``deepseg-unet``) and free ones (``model_version``, ...).

Every network takes N x C x H x W float32 normalized input, ``x = (x - mean[c]) / std[c]``,
and returns N x 1 x H x W logits (binary, sigmoid) or N x K x H x W logits (softmax).
``read_model_card`` checks the folder without the weights (it runs before any work);
``load_model`` also loads the network and runs it once on a zero tile to learn K.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import DeepSegError
from .frameworks import FRAMEWORKS, brief

log = logging.getLogger(__name__)

WEIGHTS, STATS, CONFIG = "best_model.pth", "normalization_stats.json", "config.yaml"
PROBE_PX = 512  # side (px) of the zero tile load_model runs: grid.tile_size's default


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
    classes: int  # K, the logit channels the network returns


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


def _read_stats(path: Path, bands: int) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """Mean, std (float32, input pixel units), the file's MD5 and its ``data_version``."""
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
    version = stats.get("data_version")
    return mean, std, hashlib.md5(raw).hexdigest(), None if version is None else str(version)


def _check_data_version(path: Path, found: str | None, expected: str | None) -> None:
    """Refuse statistics computed on other data than the experiment expects."""
    if expected is not None and found != expected:
        raise DeepSegError(
            f"{path}: data_version is {found!r} but model.expected_data_version is "
            f"{expected!r}; use the model trained on that data or change the experiment"
        )


def _whole(value: Any, lowest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def _class_keys(path: Path, config: dict[str, Any]) -> tuple[int | None, int]:
    """``classes`` (None when not given) and ``positive_class`` (default 1) of config.yaml."""
    classes, positive_class = config.get("classes"), config.get("positive_class", 1)
    if classes is not None and not _whole(classes, 1):
        raise DeepSegError(f"{path}: classes: expected an integer >= 1, got {classes!r}")
    if not _whole(positive_class, 0):
        raise DeepSegError(
            f"{path}: positive_class: expected an integer >= 0, got {positive_class!r}"
        )
    return classes, positive_class


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
    classes: int | None  # config.yaml's classes, when given
    positive_class: int  # for K-class models: the class whose probability is mapped
    data_version: str | None  # normalization_stats.json's data_version, when given


def read_model_card(
    model_dir: Path, bands: int, expected_data_version: str | None = None
) -> ModelCard:
    """Check ``config.yaml`` and the statistics of a model for ``bands`` input channels, and
    that the statistics' ``data_version`` is ``expected_data_version`` when that is set."""
    config_path = model_dir / CONFIG
    config = _read_yaml(config_path)
    framework = config.get("framework")
    if framework not in FRAMEWORKS:
        raise DeepSegError(
            f"{config_path}: framework: expected one of {sorted(FRAMEWORKS)}, got {framework!r}"
        )
    threshold = config.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise DeepSegError(f"{config_path}: threshold: expected a number in [0, 1]")
    classes, positive_class = _class_keys(config_path, config)
    mean, std, md5, data_version = _read_stats(model_dir / STATS, bands)
    _check_data_version(model_dir / STATS, data_version, expected_data_version)
    return ModelCard(
        model_dir,
        framework,
        float(threshold),
        mean,
        std,
        md5,
        config,
        classes,
        positive_class,
        data_version,
    )


def count_classes(
    network: torch.nn.Module, card: ModelCard, bands: int, px: int, device: torch.device
) -> int:
    """K, the logit channels ``network`` returns for a 1 x ``bands`` x ``px`` x ``px`` zero
    tile on ``device``, checked against config.yaml's ``classes`` and ``positive_class``."""
    weights, config_path = card.folder / WEIGHTS, card.folder / CONFIG
    tile = torch.zeros(1, bands, px, px, device=device)
    try:
        with torch.inference_mode():
            logits = network(tile)
    except DeepSegError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the model's, said in one line
        raise DeepSegError(
            f"{weights}: the network fails on a 1 x {bands} x {px} x {px} tile ({brief(exc)})"
        ) from exc
    if not (
        isinstance(logits, torch.Tensor)
        and logits.ndim == 4
        and logits.shape[0] == 1
        and tuple(logits.shape[2:]) == (px, px)
    ):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DeepSegError(
            f"{weights}: expected N x K x H x W logits, got {got} for a "
            f"1 x {bands} x {px} x {px} tile"
        )
    classes = logits.shape[1]
    if card.classes is not None and card.classes != classes:
        raise DeepSegError(
            f"{config_path}: classes: {card.classes}, but the network returns {classes}"
        )
    if classes > 1 and card.positive_class >= classes:
        raise DeepSegError(
            f"{config_path}: positive_class: {card.positive_class} is not a class of this "
            f"{classes}-class network; expected 0 to {classes - 1}"
        )
    return classes


def load_model(
    model_dir: Path,
    bands: int,
    device: str = "auto",
    *,
    expected_data_version: str | None = None,
    tile_size: int | None = None,
) -> LoadedModel:
    """Load the model folder for input with ``bands`` channels onto ``device``.

    The network is run once on a zero tile of ``tile_size`` px (default: the size the network
    fixes, if any, else ``PROBE_PX``) to learn and check its class count.
    """
    card = read_model_card(model_dir, bands, expected_data_version)
    try:
        network = FRAMEWORKS[card.framework](model_dir / WEIGHTS, card.config)
    except DeepSegError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DeepSegError(
            f"{model_dir / WEIGHTS}: cannot load {card.framework} weights ({brief(exc)})"
        ) from exc
    target = choose_device(device)
    network = network.to(target).eval()
    px = tile_size or getattr(network, "fixed_px", None) or PROBE_PX
    classes = count_classes(network, card, bands, px, target)
    log.info(
        "model %s (%s, %d class%s) on %s, threshold %.3f, stats MD5 %s, data_version %s",
        model_dir,
        card.framework,
        classes,
        "" if classes == 1 else "es",
        target,
        card.threshold,
        card.stats_md5,
        card.data_version,
    )
    return LoadedModel(
        network,
        card.framework,
        card.threshold,
        card.mean,
        card.std,
        card.positive_class,
        card.config,
        card.stats_md5,
        target,
        classes,
    )

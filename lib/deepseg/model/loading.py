"""A model folder loaded for inference: its network on a device, with its card.

``load_model`` reads the card (``card.read_model_card``), builds the network with the loader
``framework:`` names (``frameworks``), moves it to the device and runs it once on a zero tile to
learn (and check) K, the logit channels it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DeepSegError, brief
from .card import CONFIG, WEIGHTS, ModelCard, read_model_card
from .frameworks import FRAMEWORKS

log = logging.getLogger(__name__)

PROBE_PX = 512  # side (px) of the zero tile load_model runs: grid.tile_size's default


@dataclass
class LoadedModel:
    """A model ready for inference: the network on ``device``, the card it was read from,
    and K (``classes``), the logit channels the network returns."""

    network: torch.nn.Module
    card: ModelCard
    device: torch.device
    classes: int

    @property
    def framework(self) -> str:
        return self.card.framework

    @property
    def threshold(self) -> float:
        """The calibrated probability threshold from config.yaml."""
        return self.card.threshold

    @property
    def mean(self) -> np.ndarray:
        """float32 (C,), input pixel units."""
        return self.card.mean

    @property
    def std(self) -> np.ndarray:
        """float32 (C,), input pixel units."""
        return self.card.std

    @property
    def positive_class(self) -> int:
        """For K-class models: the class whose probability is mapped."""
        return self.card.positive_class

    @property
    def config(self) -> dict[str, Any]:
        return self.card.config

    @property
    def stats_md5(self) -> str:
        """MD5 of normalization_stats.json, for the run log."""
        return self.card.stats_md5


def choose_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeepSegError("inference.device: cuda was asked for but no CUDA GPU is visible")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


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
        given = f"{card.classes} class names" if card.class_table else str(card.classes)
        raise DeepSegError(
            f"{config_path}: classes: {given}, but the network returns {classes} channels"
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
    return LoadedModel(network, card, target, classes)

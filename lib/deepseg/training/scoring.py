"""What every trainer shares: the segmentation loss and the threshold calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..qa.metrics import PixelTally, best_threshold


@dataclass(frozen=True)
class Calibration:
    """The F-beta-best probability threshold on a scene and the pixel scores there."""

    threshold: float
    fbeta: float
    precision: float
    recall: float


def segmentation_loss(
    logits: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (1 - Dice over the whole batch); ``weight``
    (0 or 1 per pixel) leaves pixels out of both, e.g. those without input data."""
    bce = F.binary_cross_entropy_with_logits(logits, truth, weight=weight)
    prob = torch.sigmoid(logits)
    if weight is not None:
        bce = bce * weight.numel() / weight.sum().clamp(min=1)
        prob, truth = prob * weight, truth * weight
    dice = (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
    return bce + 1 - dice


def calibrate_threshold(prob: np.ndarray, truth: np.ndarray, beta: float) -> Calibration:
    """The threshold with the best pixel F-beta of ``prob >= t`` against ``truth`` (1-D
    arrays), chosen as ``evaluate.py --calibrate`` chooses it (``metrics.best_threshold``:
    thresholds k / 1000, the middle of the first run that reaches the maximum)."""
    tally = PixelTally()
    tally.add(prob, np.zeros(prob.shape, dtype=bool), truth)
    return calibrate_tally(tally, beta)


def calibrate_tally(tally: PixelTally, beta: float) -> Calibration:
    """``calibrate_threshold`` over pixels counted batch by batch into ``tally``."""
    best = best_threshold(tally, beta)
    return Calibration(
        best["threshold"], best["f_beta"], best["precision"] or 0.0, best["recall"] or 0.0
    )

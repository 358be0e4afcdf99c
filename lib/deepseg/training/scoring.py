"""What every trainer shares: the segmentation losses (binary, K-class) and the threshold
calibration (a K-class model's validation: macro scores of its labelled classes)."""

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


def class_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice (1 - the mean over the K classes) of (N, K, H, W) logits
    against (N, 1, H, W) int64 classes; ``weight`` (0 or 1 per pixel) leaves pixels out."""
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")[:, None]
    ce = (ce * weight).sum() / weight.sum().clamp(min=1)
    prob = torch.softmax(logits, dim=1) * weight
    onehot = F.one_hot(target[:, 0], logits.shape[1]).permute(0, 3, 1, 2) * weight
    dims = (0, 2, 3)
    dice = (2 * (prob * onehot).sum(dims) + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
    return ce + 1 - dice.mean()


def class_calibration(matrix: np.ndarray, beta: float) -> Calibration:
    """Macro precision, recall and F-beta over classes 1..K-1 (the labelled ones) of a
    confusion matrix (rows: label, columns: predicted class); the threshold is 0.5, unused
    (a K-class map takes the most probable class)."""
    hit = np.diag(matrix)[1:].astype(np.float64)
    predicted, labelled = matrix.sum(axis=0)[1:], matrix.sum(axis=1)[1:]
    p = np.divide(hit, predicted, out=np.zeros_like(hit), where=predicted > 0)
    r = np.divide(hit, labelled, out=np.zeros_like(hit), where=labelled > 0)
    b2 = beta**2
    den = b2 * p + r
    f = np.divide((1 + b2) * p * r, den, out=np.zeros_like(hit), where=den > 0)
    return Calibration(0.5, float(f.mean()), float(p.mean()), float(r.mean()))

"""Overlapping tile predictions merged over a chunk (``merge.method``), on the model's device.

``max``: P = max over the tiles covering a pixel (the RTS spec's rule). ``sinusoidal``: the
mean weighted by a sin^2 window, w(i) = sin^2(pi (i + 0.5) / T) per axis, which sums to one
at stride T/2 and is never zero, so the raster's edge needs no special case. For K classes
(probabilities (K, H, W)) ``max`` keeps per pixel the whole vector of the tile whose top
class is most confident (the first on ties) and ``sinusoidal`` weights each class alike.
"""

from __future__ import annotations

import math

import torch

from ..stores.layout import PROB_NODATA


def more_confident(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Where the top class of K-class probabilities ``new`` (.., K, H, W) is more probable
    than that of ``old``: (.., 1, H, W) bool, which ``torch.where`` spreads over the classes."""
    return new.amax(dim=-3, keepdim=True) > old.amax(dim=-3, keepdim=True)


def sin2_window(tile: int, device: torch.device) -> torch.Tensor:
    """(T, T) weights w(i) w(j), w(i) = sin^2(pi (i + 0.5) / T): sums to 1 at stride T/2."""
    w = torch.sin(math.pi * (torch.arange(tile, device=device, dtype=torch.float64) + 0.5) / tile)
    w = (w**2).float()
    return w[:, None] * w[None, :]


class MaxMerge:
    """P = max over the tiles covering a pixel; -1 where none does. K classes (``shape``
    (K, H, W)): the vector of the tile whose top class is most confident."""

    weighted = False

    def __init__(self, shape: tuple[int, ...], tile: int, device: torch.device) -> None:
        self.prob = torch.full(shape, PROB_NODATA, device=device)

    def add(self, window: tuple[slice, slice], prob: torch.Tensor) -> None:
        at = (..., *window)
        if prob.ndim == 3:
            self.prob[at] = torch.where(more_confident(prob, self.prob[at]), prob, self.prob[at])
            return
        self.prob[at] = torch.maximum(self.prob[at], prob)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.prob, None


class SinusoidalMerge:
    """P = sum(w p) / sum(w) over the tiles covering a pixel; the weight sum is kept too, so
    merge and vectorize can combine neighbouring chunks by the same weighted mean. K classes
    (``shape`` (K, H, W)): the same mean per class, one weight sum (H, W)."""

    weighted = True

    def __init__(self, shape: tuple[int, ...], tile: int, device: torch.device) -> None:
        self.num = torch.zeros(shape, device=device)
        self.den = torch.zeros(shape[-2:], device=device)
        self.window = sin2_window(tile, device)

    def add(self, window: tuple[slice, slice], prob: torch.Tensor) -> None:
        self.num[(..., *window)] += self.window * prob
        self.den[window] += self.window

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        covered = self.den > 0
        prob = torch.where(covered, self.num / self.den.clamp_min(1e-30), PROB_NODATA)
        return prob, self.den


MERGE_METHODS = {"max": MaxMerge, "sinusoidal": SinusoidalMerge}

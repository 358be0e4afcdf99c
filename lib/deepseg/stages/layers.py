"""The rasters merge writes per region, each computed from the fused probability of a window.

``prob`` (float32 in [0, 1], nodata -1, averaged overviews), ``binary`` (uint8 0/1 at the
threshold, nodata 255, nearest overviews), and with ``merge.products``: ``uncertainty`` (the
binary entropy of the fused probability in bits, [0, 1], nodata -1) and ``scales`` (uint8, bit i
set where scale i of ``inference.scales`` reached the threshold, nodata 255).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import Experiment
from ..stores.layout import PROB_NODATA

BINARY_NODATA = 255


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2 (1 - p) in bits (0 at p = 0 or 1); nodata stays -1."""
    p = np.clip(prob.astype(np.float64), 1e-12, 1 - 1e-12)  # float32 rounds 1 - 1e-12 to 1
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h[(prob <= 0) | (prob >= 1)] = 0.0
    return np.where(prob == PROB_NODATA, PROB_NODATA, h).astype(np.float32)


def _binary(prob: np.ndarray, hits: np.ndarray, threshold: float) -> np.ndarray:
    out = (prob >= threshold).astype(np.uint8)
    out[prob == PROB_NODATA] = BINARY_NODATA
    return out


@dataclass(frozen=True)
class Layer:
    """One merged raster: its type, nodata, compression predictor, overview resampling."""

    dtype: str
    nodata: float
    predictor: str
    resampling: str
    compute: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (prob, hits, threshold)


LAYERS: dict[str, Layer] = {
    "prob": Layer("float32", PROB_NODATA, "FLOATING_POINT", "AVERAGE", lambda p, h, t: p),
    "binary": Layer("uint8", BINARY_NODATA, "NO", "NEAREST", _binary),
    "uncertainty": Layer(
        "float32", PROB_NODATA, "FLOATING_POINT", "AVERAGE", lambda p, h, t: binary_entropy(p)
    ),
    "scales": Layer(
        "uint8", BINARY_NODATA, "NO", "NEAREST", lambda p, h, t: np.where(p == PROB_NODATA, 255, h)
    ),
}


def layer_names(exp: Experiment) -> list[str]:
    """The rasters a region gets: prob and binary, then the products asked for."""
    return ["prob", "binary", *[p for p in exp.merge.products if p in LAYERS]]

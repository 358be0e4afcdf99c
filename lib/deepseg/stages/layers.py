"""The rasters merge writes per region, each computed from the fused probability of a window.

Binary runs: ``prob`` (float32 in [0, 1], nodata -1, averaged overviews), ``binary`` (uint8
0/1 at the threshold, nodata 255, nearest overviews), and with ``merge.products``:
``uncertainty`` (the binary entropy of the fused probability in bits, [0, 1], nodata -1) and
``scales`` (uint8, bit i set where scale i of ``inference.scales`` reached the threshold,
nodata 255).

K-class runs (the model's config.yaml names its classes; predict records them in the run
log): ``class`` (uint8 index of the most probable class, the first on ties, nodata 255, with
the classes' colour table), ``maxprob`` (that class's probability), ``entropy`` (E = -sum_c
P_c log2 P_c in bits, [0, log2 K]) and ``gap`` (highest minus second-highest probability),
float32 with nodata -1; with ``merge.products``: ``probs`` (K float32 bands, one per class)
and ``scales`` (bit i where scale i's top class was the fused one, in some tile over the
pixel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import Experiment
from ..core.errors import DeepSegError
from ..model.classes import ClassTable
from ..run.runlog import read_run_log
from ..storage.paths import RunPaths
from ..stores.layout import PROB_NODATA, holds_probability

BINARY_NODATA = 255
CLASS_NODATA = 255
Compute = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (prob, hits, threshold)


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2 (1 - p) in bits (0 at p = 0 or 1); nodata stays -1."""
    p = np.clip(prob.astype(np.float64), 1e-12, 1 - 1e-12)  # float32 rounds 1 - 1e-12 to 1
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h[(prob <= 0) | (prob >= 1)] = 0.0
    return np.where(prob == PROB_NODATA, PROB_NODATA, h).astype(np.float32)


def class_entropy(probs: np.ndarray) -> np.ndarray:
    """E = -sum_c P_c log2 P_c in bits (0 log 0 = 0) of (K, h, w) probabilities; nodata -1."""
    p = probs.astype(np.float64)
    terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    e = np.maximum(-terms.sum(axis=0), 0.0)
    return np.where(probs[0] == PROB_NODATA, PROB_NODATA, e).astype(np.float32)


def top_two_gap(probs: np.ndarray) -> np.ndarray:
    """Highest minus second-highest class probability of (K, h, w) probabilities; nodata -1."""
    top2 = -np.partition(-probs, 1, axis=0)[:2]
    return np.where(probs[0] == PROB_NODATA, PROB_NODATA, top2[0] - top2[1]).astype(np.float32)


def class_map(probs: np.ndarray) -> np.ndarray:
    """uint8 index of the most probable class (the first on ties); nodata 255."""
    return np.where(probs[0] == PROB_NODATA, CLASS_NODATA, probs.argmax(axis=0)).astype(np.uint8)


def _max_prob(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=0)  # nodata: every class is -1 there


def _binary(prob: np.ndarray, hits: np.ndarray, threshold: float) -> np.ndarray:
    out = (prob >= threshold).astype(np.uint8)
    out[prob == PROB_NODATA] = BINARY_NODATA
    return out


def _scales(prob: np.ndarray, hits: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(holds_probability(prob), hits, BINARY_NODATA)


@dataclass(frozen=True)
class Layer:
    """One merged raster: its type, nodata, compression predictor, overview resampling; a
    ``per_class`` layer has one band per class, a ``palette`` one the classes' colours."""

    dtype: str
    nodata: float
    predictor: str
    resampling: str
    compute: Compute  # (prob, hits, threshold) -> (h, w), or (K, h, w) when per_class
    per_class: bool = False
    palette: bool = False


def _of_probs(f: Callable[[np.ndarray], np.ndarray]) -> Compute:
    return lambda p, h, t: f(p)


_FLOAT = ("float32", PROB_NODATA, "FLOATING_POINT", "AVERAGE")
LAYERS: dict[str, Layer] = {
    "prob": Layer(*_FLOAT, lambda p, h, t: p),
    "binary": Layer("uint8", BINARY_NODATA, "NO", "NEAREST", _binary),
    "uncertainty": Layer(*_FLOAT, _of_probs(binary_entropy)),
    "scales": Layer("uint8", BINARY_NODATA, "NO", "NEAREST", _scales),
    "class": Layer("uint8", CLASS_NODATA, "NO", "NEAREST", _of_probs(class_map), palette=True),
    "maxprob": Layer(*_FLOAT, _of_probs(_max_prob)),
    "entropy": Layer(*_FLOAT, _of_probs(class_entropy)),
    "gap": Layer(*_FLOAT, _of_probs(top_two_gap)),
    "probs": Layer(*_FLOAT, lambda p, h, t: p, per_class=True),
}
BINARY_PRODUCTS = ("uncertainty", "scales")
CLASS_PRODUCTS = ("probs", "scales")


def run_classes(exp: Experiment) -> ClassTable | None:
    """The class table predict recorded in the run log; None for a binary run."""
    recorded = read_run_log(RunPaths.of(exp)).get("classes")
    if not recorded:
        return None
    names = tuple(str(c["name"]) for c in recorded)
    return ClassTable(names, tuple(tuple(int(v) for v in c["colour"]) for c in recorded))


def classes_record(table: ClassTable | None) -> list[dict] | None:
    """What the run log records of a class table (``run_classes`` reads it back)."""
    if table is None:
        return None
    return [{"name": n, "colour": list(c)} for n, c in zip(table.names, table.colours, strict=True)]


def layer_names(exp: Experiment, classes: ClassTable | None) -> list[str]:
    """The rasters a region gets: prob and binary (K-class: class, maxprob, entropy, gap),
    then the products asked for; a product of the other kind of run is refused."""
    asked = [p for p in exp.merge.products if p in LAYERS]
    wrong = [p for p in asked if p not in (CLASS_PRODUCTS if classes else BINARY_PRODUCTS)]
    if wrong:
        kind = f"a {len(classes)}-class" if classes else "a binary (one-probability)"
        raise DeepSegError(
            f"merge.products: {wrong[0]} is not made for {kind} run (it takes "
            f"{', '.join(CLASS_PRODUCTS if classes else BINARY_PRODUCTS)}, preview); remove it"
        )
    first = ["class", "maxprob", "entropy", "gap"] if classes else ["prob", "binary"]
    return first + asked

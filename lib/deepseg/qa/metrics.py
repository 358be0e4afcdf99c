"""Scores of predictions against references: pixel counts, the precision-recall curve over
thresholds, one-to-one matching of polygons by IoU and object scores by group. No files.

With tp = predicted and reference, fp = predicted only, fn = reference only (pixels or
polygons): precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn),
IoU = tp / (tp + fp + fn), F-beta = (1 + b²) tp / ((1 + b²) tp + b² fn + fp). A score whose
denominator is 0 is None (null in JSON).

Thresholds are ``THRESHOLDS[k] = k / 1000``. A probability p counts in histogram bin k when
``t_k <= p < t_(k+1)`` (bin 1000: p >= 1), compared in float32 exactly as merge compares
float32 probabilities with its threshold, so the pixels at or above t_k are exactly bins
k..1000: one pass over the probabilities scores every threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

N_STEPS = 1000
THRESHOLDS = np.arange(N_STEPS + 1) / N_STEPS  # k / 1000, correctly rounded like 0.7 in JSON
_EDGES_F32 = THRESHOLDS.astype(np.float32)
# RTS size classes by polygon area in km² (of the experiment's crs): [low, high)
SIZE_CLASSES_KM2 = {
    "lt_0.01_km2": (0.0, 0.01),
    "0.01_to_0.1_km2": (0.01, 0.1),
    "ge_0.1_km2": (0.1, None),
}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def scores(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    """Precision, recall and F1 with the counts they come from."""
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
    }


def f_beta(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """F-beta per element (0 where nothing is predicted nor referenced)."""
    b2 = beta * beta
    num = (1 + b2) * np.asarray(tp, dtype=np.float64)
    den = num + b2 * np.asarray(fn, dtype=np.float64) + np.asarray(fp, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def threshold_bins(prob: np.ndarray) -> np.ndarray:
    """Histogram bin (0..1000) of each probability in [0, 1]: the largest k with p >= t_k.

    ``floor(p * 1000)`` in float32 is within one bin of the answer (its rounding error is
    far below one bin); one comparison with each neighbouring float32 edge settles it,
    about 15 times faster than a binary search over the edges.
    """
    p = prob.astype(np.float32, copy=False)
    bins = (p * np.float32(N_STEPS)).astype(np.int64)
    np.clip(bins, 0, N_STEPS, out=bins)
    bins -= p < _EDGES_F32[bins]
    above = np.minimum(bins + 1, N_STEPS)
    bins += (p >= _EDGES_F32[above]) & (above > bins)
    return np.clip(bins, 0, N_STEPS, out=bins)


@dataclass
class PixelTally:
    """Pixel counts of one area: at the binary map's threshold (tp, fp, fn, tn) and, for the
    curve, the probabilities of reference-positive and reference-negative pixels by bin."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    positives: np.ndarray = field(default_factory=lambda: np.zeros(N_STEPS + 1, np.int64))
    negatives: np.ndarray = field(default_factory=lambda: np.zeros(N_STEPS + 1, np.int64))

    def add(self, prob: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> None:
        """Count evaluated pixels: probabilities, binary-map flags, reference flags (1-D)."""
        self.tp += int(np.count_nonzero(predicted & truth))
        self.fp += int(np.count_nonzero(predicted & ~truth))
        self.fn += int(np.count_nonzero(~predicted & truth))
        self.tn += int(np.count_nonzero(~predicted & ~truth))
        both = np.bincount(threshold_bins(prob) + truth * (N_STEPS + 1), minlength=2 * N_STEPS + 2)
        self.negatives += both[: N_STEPS + 1]
        self.positives += both[N_STEPS + 1 :]

    def __add__(self, other: PixelTally) -> PixelTally:
        return PixelTally(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.tn + other.tn,
            self.positives + other.positives,
            self.negatives + other.negatives,
        )

    @property
    def evaluated(self) -> int:
        """How many pixels were counted."""
        return self.tp + self.fp + self.fn + self.tn

    def scores(self) -> dict[str, float | int | None]:
        """Precision, recall, F1, IoU and the pixel counts (``tp_px`` ...) of the binary map."""
        base = scores(self.tp, self.fp, self.fn)
        return {
            "precision": base["precision"],
            "recall": base["recall"],
            "f1": base["f1"],
            "iou": _ratio(self.tp, self.tp + self.fp + self.fn),
            "tp_px": self.tp,
            "fp_px": self.fp,
            "fn_px": self.fn,
            "tn_px": self.tn,
        }

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tp, fp, fn) pixel counts at every threshold ``THRESHOLDS[k]``."""
        tp = np.cumsum(self.positives[::-1])[::-1]
        fp = np.cumsum(self.negatives[::-1])[::-1]
        return tp, fp, int(self.positives.sum()) - tp


def best_threshold(tally: PixelTally, beta: float) -> dict[str, float | int | None]:
    """The threshold maximising pixel F-beta: the middle of the first run of thresholds that
    reach the maximum (they differ only where no probability falls between them)."""
    tp, fp, fn = tally.curve()
    score = f_beta(tp, fp, fn, beta)
    first = int(np.argmax(score))
    last = first
    while last + 1 <= N_STEPS and score[last + 1] == score[first]:
        last += 1
    k = (first + last) // 2
    return {
        "threshold": float(THRESHOLDS[k]),
        "beta": beta,
        "f_beta": float(score[k]),
        **scores(int(tp[k]), int(fp[k]), int(fn[k])),
    }


def match_by_iou(
    predicted: np.ndarray, reference: np.ndarray, min_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of polygons (shapely arrays, same projected CRS) by descending IoU.

    Pairs with IoU >= ``min_iou`` are taken greedily, highest IoU first (ties: lower
    predicted, then reference index), each polygon at most once. Returns, per predicted
    polygon, the index of its reference (-1: unmatched, a false positive) and the IoU.
    """
    pred_idx, ref_idx = shapely.STRtree(reference).query(predicted, predicate="intersects")
    inter = shapely.area(shapely.intersection(predicted[pred_idx], reference[ref_idx]))
    union = shapely.area(predicted[pred_idx]) + shapely.area(reference[ref_idx]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = (iou >= min_iou) & (inter > 0)
    pred_idx, ref_idx, iou = pred_idx[keep], ref_idx[keep], iou[keep]
    matched_ref = np.full(len(predicted), -1, dtype=np.int64)
    matched_iou = np.zeros(len(predicted))
    ref_taken = np.zeros(len(reference), dtype=bool)
    for i in np.lexsort((ref_idx, pred_idx, -iou)):
        p, r = pred_idx[i], ref_idx[i]
        if matched_ref[p] < 0 and not ref_taken[r]:
            matched_ref[p], matched_iou[p], ref_taken[r] = r, iou[i], True
    return matched_ref, matched_iou


def size_classes(area_m2: np.ndarray) -> np.ndarray:
    """The ``SIZE_CLASSES_KM2`` name of each area given in square metres."""
    names = np.array(list(SIZE_CLASSES_KM2))
    highs = [high for _, high in SIZE_CLASSES_KM2.values() if high is not None]
    return names[np.digitize(np.asarray(area_m2, dtype=np.float64) / 1e6, highs)]


def object_outcomes(
    predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame, min_iou: float, crs: str
) -> gpd.GeoDataFrame:
    """One row per TP, FP and FN: the error map. ``predicted`` (with ``rts_id``) and
    ``reference`` hold the evaluated polygons, each with its ``region``; ``min_iou`` is the
    matching IoU. TP rows carry the predicted polygon and the reference's region and size
    class, FP rows the prediction's, FN rows the reference polygon and its own."""
    pred_geoms, ref_geoms = predicted.geometry.values, reference.geometry.values
    matched, iou = match_by_iou(np.asarray(pred_geoms), np.asarray(ref_geoms), min_iou)
    ref_class = size_classes(shapely.area(ref_geoms))
    pred_class = size_classes(shapely.area(pred_geoms))
    hit = matched >= 0
    missed = np.setdiff1d(np.arange(len(reference)), matched[hit])
    parts = [
        pd.DataFrame(
            {
                "kind": "TP",
                "prediction_id": predicted["rts_id"].values[hit],
                "reference_index": reference.index.values[matched[hit]],
                "iou": iou[hit],
                "region": reference["region"].values[matched[hit]],
                "size_class": ref_class[matched[hit]],
                "geometry": pred_geoms[hit],
            }
        ),
        pd.DataFrame(
            {
                "kind": "FP",
                "prediction_id": predicted["rts_id"].values[~hit],
                "reference_index": -1,
                "iou": 0.0,
                "region": predicted["region"].values[~hit],
                "size_class": pred_class[~hit],
                "geometry": pred_geoms[~hit],
            }
        ),
        pd.DataFrame(
            {
                "kind": "FN",
                "prediction_id": "",
                "reference_index": reference.index.values[missed],
                "iou": 0.0,
                "region": reference["region"].values[missed],
                "size_class": ref_class[missed],
                "geometry": ref_geoms[missed],
            }
        ),
    ]
    frame = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=crs)
    frame["reference_index"] = frame["reference_index"].astype(np.int64)
    frame["area_m2"] = frame.geometry.area
    return frame


def group_scores(outcomes: pd.DataFrame, by: str, groups: list[str]) -> dict[str, dict]:
    """Object precision/recall/F1 and TP/FP/FN counts for each value of column ``by``."""
    counts = outcomes.groupby([by, "kind"]).size()
    return {
        group: scores(*(int(counts.get((group, kind), 0)) for kind in ("TP", "FP", "FN")))
        for group in groups
    }

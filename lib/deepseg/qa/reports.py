"""Evaluation outputs a person reads: the JSON report and the precision-recall curve (PNG).

Both are deterministic (no timestamps; floats rounded to 6 decimals in the JSON), so a rerun
on the same inputs writes the same bytes. The plot is drawn with matplotlib's Agg canvas,
without pyplot, so no display or global backend is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..storage.paths import atomic_path
from .metrics import N_STEPS, THRESHOLDS, PixelTally, f_beta

CURVE_EVERY = 10  # JSON curve: every 10th threshold (0.00, 0.01, ..., 1.00)


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 6 decimals (numpy scalars made plain)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_rounded(report), indent=2) + "\n")


def _precision_recall(tally: PixelTally) -> tuple[np.ndarray, np.ndarray]:
    """Pixel precision (NaN where nothing is predicted) and recall at every threshold."""
    tp, fp, fn = tally.curve()
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return precision, recall


def curve_points(tally: PixelTally) -> dict[str, list]:
    """The pixel precision-recall curve at thresholds 0.00, 0.01, ..., 1.00 (None: undefined)."""
    precision, recall = _precision_recall(tally)
    keep = slice(0, N_STEPS + 1, CURVE_EVERY)

    def plain(values: np.ndarray) -> list:
        return [None if np.isnan(v) else float(v) for v in values[keep]]

    return {
        "threshold": [float(t) for t in THRESHOLDS[keep]],
        "precision": plain(precision),
        "recall": plain(recall),
    }


def write_pr_curve(
    path: Path, tally: PixelTally, binary: dict, best: dict, title: str, beta: float
) -> None:
    """Plot pixel precision against recall (left) and precision, recall and F-beta against the
    threshold (right), marking the binary map (``binary``: its precision and recall) and the
    best F-beta threshold (``best``, from ``metrics.best_threshold``), to a PNG."""
    precision, recall = _precision_recall(tally)
    tp, fp, fn = tally.curve()
    fig = Figure(figsize=(11, 4.8), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(recall, precision, color="tab:blue", lw=1.8, label="thresholds 0 to 1")
    marks = [
        (binary, "o", "tab:red", "binary map"),
        (best, "*", "tab:green", f"best F{beta:g} (threshold {best['threshold']:.3f})"),
    ]
    for scores, marker, color, label in marks:
        if scores["precision"] is not None and scores["recall"] is not None:
            text = f"{label}: P {scores['precision']:.3f}, R {scores['recall']:.3f}"
            left.plot(scores["recall"], scores["precision"], marker, color=color, ms=9, label=text)
    left.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    right.plot(THRESHOLDS, precision, color="tab:blue", label="precision")
    right.plot(THRESHOLDS, recall, color="tab:orange", label="recall")
    right.plot(THRESHOLDS, f_beta(tp, fp, fn, beta), color="tab:green", label=f"F{beta:g}")
    right.axvline(best["threshold"], color="tab:green", ls="--", lw=1, label="best threshold")
    right.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold (probability)", ylabel="score")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")

"""Scores, threshold bins, F-beta calibration, IoU matching and size classes, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from shapely import box

from deepseg.qa.metrics import (
    N_STEPS,
    THRESHOLDS,
    PixelTally,
    best_threshold,
    match_by_iou,
    scores,
    size_classes,
    threshold_bins,
)


def test_scores_by_hand():
    assert scores(3, 2, 2) == {
        "precision": 0.6,
        "recall": 0.6,
        "f1": 0.6,
        "tp": 3,
        "fp": 2,
        "fn": 2,
    }
    assert scores(0, 0, 5) == {
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 5,
    }
    assert scores(0, 0, 0)["f1"] is None


def test_bins_count_exactly_what_merge_thresholds():
    """Pixels in bins k..1000 are exactly those merge keeps at threshold k/1000 (float32)."""
    edges = THRESHOLDS.astype(np.float32)
    rng = np.random.default_rng(0)
    prob = np.concatenate(
        [
            rng.random(20000, dtype=np.float32),
            edges,  # on every threshold, and one float32 step either side of it
            np.nextafter(edges, np.float32(0)),
            np.nextafter(edges, np.float32(1)),
            np.float32([0, 1, 0.7, 0.1, 0.3]),
        ]
    ).clip(0, 1)
    bins = threshold_bins(prob)
    for k in range(N_STEPS + 1):
        merge_keeps = prob >= float(THRESHOLDS[k])  # as merge: float32 array >= Python float
        np.testing.assert_array_equal(bins >= k, merge_keeps, err_msg=f"threshold {k}/1000")


def _tally(values: list[tuple[float, bool, int]]) -> PixelTally:
    """A tally of pixels given as (probability, reference, how many)."""
    prob = np.concatenate([np.full(n, p, np.float32) for p, _, n in values])
    truth = np.concatenate([np.full(n, t) for _, t, n in values])
    tally = PixelTally()
    tally.add(prob, prob >= 0.5, truth)
    return tally


def test_best_threshold_depends_on_beta():
    # reference pixels: 500 at 0.9, 500 at 0.6; background: 300 at 0.7, 2000 at 0.1.
    # t in (0.1, 0.6]: tp 1000, fp 300, fn 0   -> F1 0.870, F0.5 0.806
    # t in (0.6, 0.7]: tp 500,  fp 300, fn 500 -> F1 0.556, F0.5 0.595
    # t in (0.7, 0.9]: tp 500,  fp 0,   fn 500 -> F1 0.667, F0.5 0.833
    # the middle of the best run: F0.5 -> (701 + 900) // 2 = 800, F1 -> (101 + 600) // 2 = 350
    tally = _tally([(0.9, True, 500), (0.6, True, 500), (0.7, False, 300), (0.1, False, 2000)])
    precise = best_threshold(tally, 0.5)
    assert precise["threshold"] == 0.8
    assert (precise["tp"], precise["fp"], precise["fn"]) == (500, 0, 500)
    assert precise["f_beta"] == pytest.approx(1.25 * 500 / (1.25 * 500 + 0.25 * 500))
    balanced = best_threshold(tally, 1.0)
    assert balanced["threshold"] == 0.35
    assert (balanced["tp"], balanced["fp"], balanced["fn"]) == (1000, 300, 0)
    assert balanced["f_beta"] == pytest.approx(2000 / 2300)
    # the binary map's own counts (threshold 0.5) are the curve's at k = 500
    tp, fp, fn = tally.curve()
    assert (tally.tp, tally.fp, tally.fn) == (tp[500], fp[500], fn[500]) == (1000, 300, 0)
    assert tally.tn == 2000 and tally.evaluated == 3300


def test_tallies_add_up():
    a = _tally([(0.9, True, 5), (0.2, False, 7)])
    b = _tally([(0.6, False, 3), (0.3, True, 2)])
    both = a + b
    assert (both.tp, both.fp, both.fn, both.tn) == (5, 3, 2, 7)
    np.testing.assert_array_equal(both.positives, a.positives + b.positives)


def test_match_takes_the_higher_iou_one_to_one():
    ref = np.array([box(0, 0, 10, 10)])
    # two predictions on one reference: IoU 0.5 and 0.8; the better one wins
    matched, iou = match_by_iou(np.array([box(0, 0, 10, 5), box(0, 0, 10, 8)]), ref, 0.25)
    assert matched.tolist() == [-1, 0]
    assert iou.tolist() == [0.0, 0.8]


def test_match_is_greedy_by_descending_iou():
    refs = np.array([box(0, 0, 10, 10), box(0, 0, 10, 8)])
    preds = np.array([box(0, 0, 10, 9), box(0, 0, 10, 10)])
    # pairs: p1-r0 1.0, p0-r0 0.9, p0-r1 80/90, p1-r1 0.8: p1 takes r0, p0 falls back to r1
    matched, iou = match_by_iou(preds, refs, 0.25)
    assert matched.tolist() == [1, 0]
    assert iou == pytest.approx([80 / 90, 1.0])


def test_match_threshold_is_inclusive_and_ties_go_to_the_lower_index():
    ref = np.array([box(0, 0, 10, 10)])
    quarter = np.array([box(0, 0, 10, 2.5)])  # IoU exactly 0.25
    assert match_by_iou(quarter, ref, 0.25)[0].tolist() == [0]
    assert match_by_iou(quarter, ref, 0.26)[0].tolist() == [-1]
    twins = np.array([box(0, 0, 10, 9), box(0, 1, 10, 10)])  # both IoU 0.9
    assert match_by_iou(twins, ref, 0.25)[0].tolist() == [0, -1]
    touching = np.array([box(10, 0, 20, 10)])  # shares an edge only: IoU 0
    assert match_by_iou(touching, ref, 0.0)[0].tolist() == [-1]
    empty = np.array([], dtype=object)
    assert match_by_iou(empty, ref, 0.25)[0].tolist() == []
    assert match_by_iou(twins, empty, 0.25)[0].tolist() == [-1, -1]


def test_size_classes_in_square_metres():
    areas_m2 = [0.0, 9_999.9, 10_000.0, 99_999.0, 100_000.0, 5e6]
    assert size_classes(areas_m2).tolist() == [
        "lt_0.01_km2",
        "lt_0.01_km2",
        "0.01_to_0.1_km2",
        "0.01_to_0.1_km2",
        "ge_0.1_km2",
        "ge_0.1_km2",
    ]

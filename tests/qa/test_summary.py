"""The report printed after a run (``deepseg summary``), on the hand-made run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deepseg.config import load_experiment
from deepseg.qa.evaluate import evaluate
from deepseg.qa.summary import summarize
from deepseg.storage.paths import RunPaths
from handmade_run import PREDICTED, hand_run, write_polygons


def test_summary_before_and_after_evaluation(tmp_path: Path, model_dir: Path) -> None:
    exp = load_experiment(hand_run(tmp_path, model_dir))
    paths = RunPaths.of(exp)
    kept = ["A", "B", "C", "H"]  # D, the one with no reference, left out
    write_polygons(paths.polygons, [PREDICTED[k] for k in kept], rts_id=kept)
    before = summarize(exp).splitlines()
    assert before[0] == f"DeepSeg run {exp.name!r}: {paths.root}"
    assert before[1:4] == [
        "found:    4 polygons",
        "scores:   not evaluated (run evaluate.py with a reference)",
        "time:     no stage recorded",
    ]
    assert before[5:] == [
        "          merged/all_prob.tif (probability COG, region all)",
        "          merged/all_binary.tif (binary COG, region all)",
        "          vectors/rts_predictions.gpkg (polygons)",
    ]

    evaluate(exp, reference=tmp_path / "reference.gpkg")
    (paths.merged / "all_preview.png").write_bytes(b"\x89PNG")  # the merge product, when made
    after = summarize(exp).splitlines()
    # matched by IoU >= 0.25: A, B (0.67), H (0.68); C (0.14) is a false alarm, rC and rE
    # missed, rF on nodata not evaluated: 3 of 4 predictions, 3 of 5 references
    assert after[2] == (
        "objects:  precision 0.750, recall 0.600 against 5 reference polygons "
        "(IoU >= 0.25; TP 3, FP 1, FN 2)"
    )
    report = json.loads(paths.evaluation_report.read_text())
    pixel = report["pixel"]
    assert after[3] == (
        f"pixels:   precision {pixel['precision']:.3f}, recall {pixel['recall']:.3f}, "
        f"F1 {pixel['f1']:.3f}"  # no threshold: predict did not run, the run log has none
    )
    seconds = json.loads(paths.run_log.read_text())["stages"]["evaluate"]["seconds"]
    assert after[4] == f"time:     evaluate {seconds:.1f} s (total {seconds:.1f} s)"
    assert after[6:] == [
        "          merged/all_prob.tif (probability COG, region all)",
        "          merged/all_binary.tif (binary COG, region all)",
        "          merged/all_preview.png (preview PNG, region all)",
        "          vectors/rts_predictions.gpkg (polygons)",
        "          logs/evaluation.json (evaluation report)",
        "          logs/evaluation_pr_curve.png (precision-recall curve)",
        "          logs/evaluation_errors.gpkg (TP/FP/FN polygons)",
        "          logs/inference_log.json (run log)",
    ]


def test_summary_command_names_a_bad_experiment(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deepseg.cli", "summary", "-e", "no-such-experiment"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("deepseg: error: experiment 'no-such-experiment' not found")

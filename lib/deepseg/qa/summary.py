"""The short report a person reads after a run: what was found, how well, how long, where.

``deepseg summary -e NAME`` (``bash DeepSeg.sh demo`` runs it last) prints, from the
run's own records only (nothing is recomputed):

- the polygons found (``vectors/rts_predictions.gpkg``),
- object and pixel precision and recall from ``logs/evaluation.json`` (evaluate.py), when
  the run was evaluated,
- the time of each stage from ``logs/inference_log.json`` (``runlog``), in seconds,
- where the outputs are: the merged COGs and preview PNG of each region, the GPKG and the
  evaluation's report, curve and error map (only files that exist).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyogrio

from ..config import Experiment
from ..run.runlog import read_run_log
from ..stages.assembly import DEFAULT_REGION
from ..stages.layers import LAYERS
from ..stages.polygons import FOOTPRINTS, LAYER
from ..storage.paths import RunPaths

# the region rasters beside prob, binary and class (listed first, with their own words)
PRODUCTS = tuple(n for n in LAYERS if n not in ("prob", "binary", "class"))
STAGES = ("create_tiles", "predict", "merge_parts", "merge", "vectorize", "evaluate")


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _scores(report: dict[str, Any] | None) -> list[str]:
    """The object and pixel lines of an evaluation report (``qa.evaluate.evaluate``)."""
    if report is None:
        return ["scores:   not evaluated (run evaluate.py with a reference)"]
    if "confusion_matrix" in report:  # a K-class run (``class_scores``)
        f1 = ", ".join(f"{n} {_score(c['f1'])}" for n, c in report["per_class"].items())
        return [
            f"classes:  overall accuracy {_score(report['overall_accuracy'])}, kappa "
            f"{_score(report['kappa'])} over {report['scored_px']:,} px; F1 {f1}"
        ]
    obj, pixel = report["object"], report["pixel"]
    threshold = report.get("binary_threshold")
    at = "" if threshold is None else f" at threshold {threshold:.3f}"
    return [
        f"objects:  precision {_score(obj['precision'])}, recall {_score(obj['recall'])} "
        f"against {obj['references']} reference polygons (IoU >= {report['iou_threshold']:g}; "
        f"TP {obj['tp']}, FP {obj['fp']}, FN {obj['fn']})",
        f"pixels:   precision {_score(pixel['precision'])}, recall {_score(pixel['recall'])}, "
        f"F1 {_score(pixel['f1'])}{at}",
    ]


def _times(stages: dict[str, dict[str, Any]]) -> str:
    """``stage 1.2 s, ...`` in pipeline order for the stages the run log holds."""
    ran = [name for name in STAGES if "seconds" in stages.get(name, {})]
    ran += sorted(n for n in stages if n not in ran and "seconds" in stages[n])
    if not ran:
        return "time:     no stage recorded"
    parts = [f"{name} {stages[name]['seconds']:.1f} s" for name in ran]
    total = sum(stages[name]["seconds"] for name in ran)
    return f"time:     {', '.join(parts)} (total {total:.1f} s)"


def _outputs(exp: Experiment, paths: RunPaths) -> list[str]:
    """``path (what)`` for each output file that exists, relative to the run folder."""
    candidates: list[tuple[Path, str]] = []
    for region in list(exp.regions) or [DEFAULT_REGION]:
        candidates += [
            (paths.region_prob(region), f"probability COG, region {region}"),
            (paths.region_binary(region), f"binary COG, region {region}"),
            (paths.region_layer(region, "class"), f"class map COG, region {region}"),
            *((paths.region_layer(region, n), f"{n} COG, region {region}") for n in PRODUCTS),
            (paths.region_preview(region), f"preview PNG, region {region}"),
        ]
    candidates += [
        (paths.polygons, "polygons"),
        (paths.evaluation_report, "evaluation report"),
        (paths.evaluation_pr_curve, "precision-recall curve"),
        (paths.logs / "evaluation_confusion.png", "confusion matrix"),
        (paths.evaluation_errors, "TP/FP/FN polygons"),
        (paths.run_log, "run log"),
    ]
    return [
        f"          {path.relative_to(paths.root)} ({what})"
        for path, what in candidates
        if paths.done(path)
    ]


def summarize(exp: Experiment) -> str:
    """The report of the run ``exp`` describes, as lines of text."""
    paths = RunPaths.of(exp)
    found = "found:    no polygons yet (run vectorize.py)"
    if paths.done(paths.polygons):
        local = paths.local(paths.polygons)
        layers = [str(n) for n, _ in pyogrio.list_layers(local) if n != FOOTPRINTS]
        counts = {n: pyogrio.read_info(local, layer=n)["features"] for n in layers}
        found = f"found:    {sum(counts.values())} polygons"
        if layers != [LAYER]:  # a K-class run: a layer per class
            found += " (" + ", ".join(f"{n} {c}" for n, c in counts.items()) + ")"
    report = None
    if paths.done(paths.evaluation_report):
        report = json.loads(paths.local(paths.evaluation_report).read_text())
    stages = read_run_log(paths).get("stages", {})
    lines = [
        f"DeepSeg run {exp.name!r}: {paths.show(paths.root)}",
        found,
        *_scores(report),
        _times(stages),
        "outputs:",
        *_outputs(exp, paths),
    ]
    return "\n".join(lines)

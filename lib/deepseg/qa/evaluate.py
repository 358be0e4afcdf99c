"""Stage ``evaluate``: a run's maps and polygons scored against reference polygons.

Reads ``merged/{region}_prob.tif`` and ``_binary.tif`` and ``vectors/rts_predictions.gpkg``
(all in ``crs``, a projected CRS in metres), and reference polygons plus an optional area of
interest (AOI) from any vector file (GPKG, GeoJSON, Shapefile) in any CRS (``references``).

- Pixels: the binary map against the reference pixels over the evaluated pixels (valid
  probability, centre in the AOI; see ``pixel_scan``); the precision-recall curve over
  thresholds from the probabilities, and its best F-beta threshold (``metrics``).
- Objects: a polygon (predicted or reference) is evaluated when its representative point
  (``point_on_surface``) falls on an evaluated pixel; its region is the first region where
  it does. Polygons are matched one to one by IoU >= ``evaluate.iou``; a match is a TP
  scored under its reference's region and size class (areas in ``crs`` m²), an unmatched
  prediction an FP under its own, an unmatched reference an FN.
- Totals add the regions up (pixels of overlapping regions count once per region).

Writes ``logs/evaluation.json`` (the report), ``logs/evaluation_pr_curve.png``,
``logs/evaluation_errors.gpkg`` (layer ``evaluation_errors``, see
``metrics.object_outcomes``) and, with ``calibrate``, ``logs/calibration.json``
(see ``model.threshold``), all atomically. A K-class run is scored per class instead
(``class_scores``: confusion matrix, per-class scores, overall accuracy, kappa).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from ..config import EvaluateConfig, Experiment
from ..core.errors import DeepSegError
from ..model.threshold import merge_threshold, write_calibration
from ..run.runlog import read_run_log, record_stage
from ..stages.assembly import DEFAULT_REGION
from ..stages.layers import run_classes
from ..stages.vectorize import LAYER as PREDICTION_LAYER
from ..storage.paths import RunPaths, atomic_path
from .class_scores import evaluate_classes
from .metrics import (
    SIZE_CLASSES_KM2,
    PixelTally,
    best_threshold,
    group_scores,
    object_outcomes,
    scores,
)
from .pixel_scan import PointFinder, scan_region
from .references import read_polygons
from .reports import curve_points, write_pr_curve, write_report

log = logging.getLogger(__name__)
ERRORS_LAYER = "evaluation_errors"


def _settings(exp: Experiment, **overrides: Any) -> EvaluateConfig:
    """``evaluate:`` with the command line's non-None values on top (paths made absolute)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("reference", "aoi"):
        if key in given:
            given[key] = Path(given[key]).expanduser().absolute()
    if "reference" in given:  # another file: the experiment's layer name is not its
        given.setdefault("reference_layer", None)
    settings = dataclasses.replace(exp.evaluate, **given)
    if not 0 < settings.iou <= 1:
        raise DeepSegError(f"--iou: expected a number in (0, 1], got {settings.iou:g}")
    if not settings.beta > 0:
        raise DeepSegError(f"--beta: expected a number > 0, got {settings.beta:g}")
    if settings.reference is None:
        raise DeepSegError(
            "no reference polygons: pass --reference FILE or set evaluate.reference in "
            f"{exp.source}"
        )
    return settings


def _check_metric_crs(crs: str) -> None:
    unit = CRS.from_user_input(crs).axis_info[0].unit_name
    if unit not in ("metre", "meter"):
        raise DeepSegError(f"crs: evaluate measures areas in metres, but {crs} is in {unit}")


def _region_rasters(exp: Experiment, paths: RunPaths) -> dict[str, tuple[Path, Path]]:
    """Region name -> (probability COG, binary COG), both checked to exist."""
    names = list(exp.regions) or [DEFAULT_REGION]
    rasters = {name: (paths.region_prob(name), paths.region_binary(name)) for name in names}
    for path in (p for pair in rasters.values() for p in pair):
        if not paths.done(path):
            raise DeepSegError(f"{paths.show(path)}: missing; run merge.py first")
    return {n: (paths.local(p), paths.local(b)) for n, (p, b) in rasters.items()}


def _in_scope(frame: gpd.GeoDataFrame, finder: PointFinder) -> gpd.GeoDataFrame:
    """The polygons whose point fell on an evaluated pixel, with their ``region``."""
    found = ~pd.isna(finder.region)
    return frame[found].assign(region=finder.region[found].astype(str))


def _binary_threshold(exp: Experiment, paths: RunPaths) -> float | None:
    """The threshold merge makes the binary maps with, as it resolves it now (None: unknown)."""
    if exp.merge.threshold is None:
        predicted_with = read_run_log(paths).get("threshold")  # the model's, recorded by predict
        return None if predicted_with is None else float(predicted_with)
    try:
        return merge_threshold(exp, default=0.0)  # a number or "calibrated": no default used
    except DeepSegError:
        return None


def _read_inputs(
    exp: Experiment, settings: EvaluateConfig, paths: RunPaths
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, shapely.Geometry | None]:
    """References, predicted polygons and the AOI (one prepared geometry, or None)."""
    if not paths.done(paths.polygons):
        raise DeepSegError(f"{paths.show(paths.polygons)}: missing; run vectorize.py first")
    reference = read_polygons(settings.reference, settings.reference_layer, exp.crs, "reference")
    predicted = read_polygons(paths.local(paths.polygons), PREDICTION_LAYER, exp.crs, "predicted")
    aoi = None
    if settings.aoi is not None:
        aoi = shapely.union_all(read_polygons(settings.aoi, None, exp.crs, "aoi").geometry.values)
        shapely.prepare(aoi)
    return reference, predicted, aoi


def _report(
    exp: Experiment,
    settings: EvaluateConfig,
    paths: RunPaths,
    tallies: dict[str, PixelTally],
    pixel_m2: float,
    outcomes: pd.DataFrame,
) -> dict[str, Any]:
    """The JSON report: settings, pixel and object scores, by region and by size class."""
    total = sum(tallies.values(), PixelTally())
    kinds = outcomes["kind"].value_counts()
    tp, fp, fn = (int(kinds.get(kind, 0)) for kind in ("TP", "FP", "FN"))
    by_region = group_scores(outcomes, "region", list(tallies))
    return {
        "experiment": exp.name,
        "crs": exp.crs,
        "reference": str(settings.reference),
        "reference_layer": settings.reference_layer,
        "aoi": None if settings.aoi is None else str(settings.aoi),
        "iou_threshold": settings.iou,
        "beta": settings.beta,
        "binary_threshold": _binary_threshold(exp, paths),
        "evaluated_km2": total.evaluated * pixel_m2 / 1e6,
        "pixel": {
            **total.scores(),
            "best_threshold": best_threshold(total, settings.beta),
            "pr_curve": curve_points(total),
        },
        "object": {**scores(tp, fp, fn), "references": tp + fn, "predictions": tp + fp},
        "by_region": {
            name: {"pixel": tally.scores(), "object": by_region[name]}
            for name, tally in tallies.items()
        },
        "by_size": group_scores(outcomes, "size_class", list(SIZE_CLASSES_KM2)),
        "size_classes_km2": {name: list(bounds) for name, bounds in SIZE_CLASSES_KM2.items()},
        "files": {
            "pr_curve": str(paths.evaluation_pr_curve),
            "error_map": f"{paths.evaluation_errors} (layer {ERRORS_LAYER})",
        },
    }


def _write_outputs(
    exp: Experiment, paths: RunPaths, report: dict, total: PixelTally, outcomes: gpd.GeoDataFrame
) -> None:
    write_report(paths.evaluation_report, report)
    pixel = report["pixel"]
    title = f"{exp.name}: pixel precision-recall, {total.evaluated:,} px evaluated"
    write_pr_curve(
        paths.evaluation_pr_curve, total, pixel, pixel["best_threshold"], title, report["beta"]
    )
    with atomic_path(paths.evaluation_errors) as tmp:
        outcomes.to_file(tmp, layer=ERRORS_LAYER, driver="GPKG", promote_to_multi=True)


def _calibrate(paths: RunPaths, report: dict) -> None:
    best = report["pixel"]["best_threshold"]
    if best["tp"] + best["fn"] == 0:
        raise DeepSegError(
            f"{report['aoi'] or report['reference']}: cannot calibrate, no reference pixel in "
            "the evaluated area; use an area of interest that holds RTS"
        )
    sources = {k: report[k] for k in ("experiment", "reference", "reference_layer", "aoi")}
    write_calibration(paths, {**best, **sources, "report": str(paths.evaluation_report)})
    log.info(
        "calibrated threshold %.3f (pixel F%g %.3f) -> %s; merge.threshold: calibrated uses it "
        "(then rerun merge.py --force and vectorize.py --force)",
        best["threshold"],
        best["beta"],
        best["f_beta"],
        paths.calibration,
    )


def _log_summary(report: dict, paths: RunPaths) -> None:
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    pixel, objects = report["pixel"], report["object"]
    log.info(
        "evaluate: pixels P %s R %s F1 %s IoU %s over %.3f km2; objects P %s R %s F1 %s "
        "(TP %d, FP %d, FN %d) -> %s",
        *(show(pixel[k]) for k in ("precision", "recall", "f1", "iou")),
        report["evaluated_km2"],
        *(show(objects[k]) for k in ("precision", "recall", "f1")),
        *(objects[k] for k in ("tp", "fp", "fn")),
        paths.evaluation_report,
    )


def evaluate(
    exp: Experiment,
    force: bool = False,
    reference: Path | None = None,
    reference_layer: str | None = None,
    aoi: Path | None = None,
    iou: float | None = None,
    beta: float | None = None,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Score the run against reference polygons and write the report, curve and error map;
    with ``calibrate`` also the best F-beta threshold. Arguments other than ``exp`` override
    the ``evaluate:`` settings; ``force`` changes nothing (outputs are always rewritten)."""
    settings = _settings(
        exp, reference=reference, reference_layer=reference_layer, aoi=aoi, iou=iou, beta=beta
    )
    _check_metric_crs(exp.crs)
    paths = RunPaths.of(exp)
    classes = run_classes(exp)
    if classes and calibrate:
        raise DeepSegError(
            "--calibrate finds a binary run's probability threshold; this run has "
            f"{len(classes)} classes, whose map takes the most probable one: drop --calibrate"
        )
    if classes:  # a K-class run: scored per class (class_scores)
        with record_stage(paths, "evaluate", {}):
            return evaluate_classes(exp, settings, classes)
    rasters = _region_rasters(exp, paths)
    references, predicted, aoi_geom = _read_inputs(exp, settings, paths)
    ref_points = PointFinder(references.geometry.values)
    pred_points = PointFinder(predicted.geometry.values)
    counts: dict[str, Any] = {}
    with record_stage(paths, "evaluate", counts):
        tallies, pixel_m2 = {}, 0.0
        for name, (prob_path, binary_path) in rasters.items():
            tallies[name], pixel_m2 = scan_region(
                name,
                prob_path,
                binary_path,
                np.asarray(references.geometry.values),
                aoi_geom,
                [ref_points, pred_points],
            )
        if sum(t.evaluated for t in tallies.values()) == 0:
            if settings.aoi is not None:
                raise DeepSegError(
                    f"{settings.aoi}: the area of interest covers no predicted pixel"
                )
            raise DeepSegError(f"{paths.merged}: the merged maps hold no valid pixel to evaluate")
        references = _in_scope(references, ref_points)
        if len(references) == 0 and settings.aoi is None:
            raise DeepSegError(
                f"{settings.reference}: no reference polygon lies on the predicted area; check "
                "its CRS and extent, or pass --aoi to evaluate an area without RTS"
            )
        outcomes = object_outcomes(
            _in_scope(predicted, pred_points), references, settings.iou, exp.crs
        )
        report = _report(exp, settings, paths, tallies, pixel_m2, outcomes)
        _write_outputs(exp, paths, report, sum(tallies.values(), PixelTally()), outcomes)
        if calibrate:
            _calibrate(paths, report)
        counts.update({k: report["object"][k] for k in ("tp", "fp", "fn")})
    _log_summary(report, paths)
    return report

#!/usr/bin/env python
"""Evaluate a run against reference polygons: pixel and object precision, recall, F1 and IoU.

Writes OUTPUT/logs/evaluation.json, evaluation_pr_curve.png and evaluation_errors.gpkg; with
--calibrate also logs/calibration.json, used by `merge.threshold: calibrated`. The options
override the experiment's evaluate: keys. Example: python evaluate.py -e demo
"""

from pathlib import Path

from deepseg.cli import run_stage, stage_parser
from deepseg.evaluation import evaluate

if __name__ == "__main__":
    parser = stage_parser(__doc__, units=False)
    parser.add_argument("--reference", type=Path, help="reference polygons (GPKG, GeoJSON, SHP)")
    parser.add_argument("--reference-layer", help="layer of --reference (default: the first)")
    parser.add_argument("--aoi", type=Path, help="polygons bounding the evaluated area")
    parser.add_argument("--iou", type=float, help="IoU for a polygon match (default 0.25)")
    parser.add_argument("--beta", type=float, help="F-beta for --calibrate (default 0.5)")
    parser.add_argument(
        "--calibrate", action="store_true", help="write the best F-beta threshold to logs/"
    )
    run_stage(evaluate, __doc__, parser)

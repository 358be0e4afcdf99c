#!/usr/bin/env python
"""Evaluate a run against reference polygons: pixel and object precision, recall, F1 and IoU.

Writes OUTPUT/logs/evaluation.json, evaluation_pr_curve.png and evaluation_errors.gpkg; with
--calibrate also logs/calibration.json, used by `merge.threshold: calibrated`. The options
override the experiment's evaluate: keys. Example: python evaluate.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("evaluate", prog="evaluate.py", description=__doc__)

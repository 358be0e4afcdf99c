#!/usr/bin/env python
"""Spatial k-fold cross-validation on the training store: a model per fold, its pixel scores
and a TP/FP/FN/TN error COG, then the pooled report (crossval/report.json under output.path).

Folds are train.folds; each is one unit (one Slurm array task with cluster.executor: slurm).
Example: python crossval.py -e peel
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("crossval", prog="crossval.py", description=__doc__)

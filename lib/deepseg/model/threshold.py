"""The calibrated threshold: written by ``evaluate.py --calibrate``, used by ``merge.threshold``.

``logs/calibration.json`` (under ``output.path``) holds the probability threshold in [0, 1]
that maximised the pixel F-beta against reference polygons on a validation area, with the
scores reached there and the files used. ``merge.threshold: calibrated`` makes predict and
merge use it; ``merge_threshold`` is the one place that resolves the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Experiment
from ..core.errors import DeepSegError
from ..storage.paths import RunPaths, atomic_path

CALIBRATED = "calibrated"


def write_calibration(paths: RunPaths, record: dict[str, Any]) -> Path:
    """Write ``record`` (``threshold`` and how it was found) to ``logs/calibration.json``."""
    with atomic_path(paths.calibration) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return paths.calibration


def read_calibrated_threshold(paths: RunPaths) -> float:
    """The threshold in ``logs/calibration.json``; DeepSegError saying what to run if absent."""
    try:
        threshold = json.loads(paths.calibration.read_text())["threshold"]
    except FileNotFoundError:
        raise DeepSegError(
            f"merge.threshold is {CALIBRATED!r} but {paths.calibration} does not exist: "
            "calibrating needs a finished run. Run with merge.threshold unset (the model's "
            "threshold) or a number, then evaluate.py --calibrate with a reference, then set "
            "merge.threshold: calibrated and rerun merge.py and vectorize.py"
        ) from None
    except (ValueError, KeyError) as exc:
        raise DeepSegError(
            f"{paths.calibration}: expected JSON with a threshold ({exc}); rerun "
            "evaluate.py --calibrate"
        ) from None
    return float(threshold)


def merge_threshold(exp: Experiment, default: float) -> float:
    """The probability threshold of the binary map: ``merge.threshold`` when it is a number,
    the calibrated one when it is ``calibrated``, else ``default`` (the model's)."""
    setting = exp.merge.threshold
    if setting is None:
        return default
    if setting == CALIBRATED:
        return read_calibrated_threshold(RunPaths.of(exp))
    return float(setting)


def threshold_identity(exp: Experiment) -> Any:
    """What the binary threshold comes from, for ``made_from`` digests: the setting, with the
    calibrated value when it is ``calibrated`` (None while not calibrated)."""
    setting = exp.merge.threshold
    if setting != CALIBRATED:
        return setting
    try:
        return [setting, read_calibrated_threshold(RunPaths.of(exp))]
    except DeepSegError:
        return [setting, None]

"""``logs/inference_log.json``: what each stage did, when, and how long it took.

Each stage adds its own entry under ``stages`` (start and end time in UTC ISO 8601,
duration in seconds, its counts, and its status ``done`` or ``failed`` with the error text),
and may add top-level fields (the model's version, threshold, ...). The file is rewritten
atomically, so a crash leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .config import Experiment
from .outputs import RunPaths, atomic_path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_run_log(paths: RunPaths) -> dict[str, Any]:
    """The run log so far ({} when there is none yet)."""
    if not paths.run_log.exists():
        return {}
    return json.loads(paths.run_log.read_text())


def update_run_log(paths: RunPaths, **fields: Any) -> None:
    """Merge ``fields`` into the run log's top level and rewrite it atomically."""
    data = read_run_log(paths)
    data.update(fields)
    data["deepseg_version"] = __version__
    with atomic_path(paths.run_log) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_resolved_experiment(exp: Experiment, paths: RunPaths) -> Path:
    """Dump the experiment with every default filled in to ``logs/experiment.yaml``."""
    target = paths.logs / "experiment.yaml"
    with atomic_path(target) as tmp:
        tmp.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    return target


@contextlib.contextmanager
def record_stage(paths: RunPaths, stage: str, counts: dict[str, Any]) -> Iterator[None]:
    """Time the enclosed work and record it (with ``counts`` as filled in) in the run log."""
    start, started = time.monotonic(), _now()
    entry: dict[str, Any] = {"started": started, "status": "running"}
    try:
        yield
        entry["status"] = "done"
    except BaseException as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        entry.update(ended=_now(), seconds=round(time.monotonic() - start, 3), **counts)
        if paths.root.exists():
            stages = read_run_log(paths).get("stages", {})
            stages[stage] = entry
            update_run_log(paths, stages=stages)

"""``logs/inference_log.json``: what each stage did, when, and how long it took.

Each stage adds its own entry under ``stages`` (start and end time in UTC ISO 8601,
duration in seconds, its counts, and its status ``done`` or ``failed`` with the error text),
and may add top-level fields (the model's version, threshold, ...). The file is rewritten
atomically, so a crash leaves the previous version intact. In a gs:// run the bucket's copy is
read first and the update is published only if nobody changed it meanwhile; otherwise it is
read again and the update merged again (``gcs.Conflict``), so workers never lose each other's
entries. A stage is recorded ``done`` only once its outputs are uploaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .config import Experiment
from .gcs import Conflict
from .outputs import RunPaths, atomic_path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_run_log(paths: RunPaths) -> dict[str, Any]:
    """The run log so far ({} when there is none yet; a gs:// run reads the bucket's)."""
    path = paths.local(paths.run_log)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _rewrite(path: Path, text: Callable[[], str], attempts: int = 5) -> None:
    """Write ``text()`` to ``path`` atomically; on a Conflict, build the text again and retry."""
    for attempt in range(1, attempts + 1):
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(text())
            return
        except Conflict:
            if attempt == attempts:
                raise


def update_run_log(paths: RunPaths, **fields: Any) -> None:
    """Merge ``fields`` into the run log's top level and rewrite it atomically."""

    def merged() -> str:
        data = read_run_log(paths)
        data.update(fields)
        data["deepseg_version"] = __version__
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    _rewrite(paths.run_log, merged)


def write_resolved_experiment(exp: Experiment, paths: RunPaths) -> Path:
    """Dump the experiment with every default filled in to ``logs/experiment.yaml``."""
    target = paths.logs / "experiment.yaml"
    _rewrite(target, lambda: yaml.safe_dump(exp.to_dict(), sort_keys=False))
    return target


@contextlib.contextmanager
def record_stage(paths: RunPaths, stage: str, counts: dict[str, Any]) -> Iterator[None]:
    """Time the enclosed work and record it (with ``counts`` as filled in) in the run log."""
    start, started = time.monotonic(), _now()
    entry: dict[str, Any] = {"started": started, "status": "running"}
    try:
        yield
        paths.flush()
        entry["status"] = "done"
    except BaseException as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        paths.flush(raise_errors=False)  # what did finish is kept in the bucket
        raise
    finally:
        entry.update(ended=_now(), seconds=round(time.monotonic() - start, 3), **counts)
        if paths.root.exists():
            stages = read_run_log(paths).get("stages", {})
            stages[stage] = entry
            update_run_log(paths, stages=stages)

"""``logs/inference_log.json``: what the run is, what each stage did, when, and how long.

Top level, the deployment spec's fields (``SPEC_FIELDS``, present from the first stage on,
null until known): the model's (``model_version``, ``model_checkpoint``,
``normalization_stats_hash`` = MD5 of normalization_stats.json, ``threshold``,
``scales_used``, ``tta_config``: written by predict as it starts), ``basemap_version``
(``input.basemap_version``) and the totals ``totals`` derives from the stages' manifests
whenever a stage ends, so they cover every unit done so far by any worker, not one
invocation:

- ``n_tiles_processed``, ``n_tiles_with_detection``: summed over the done predict units;
  ``n_tiles_skipped_no_data`` over the done create_tiles units (tiles over an input without
  a valid pixel). A unit recorded as recovered (found complete on disk, its worker killed
  before recording it) has no counts and adds none; ``check`` still reads its store's tiles.
- ``n_chunks_counts_unknown``: done predict units without counts (recovered), which the tile
  totals above leave out.
- ``gpu_type``: the devices predict's units ran on (``torch.cuda.get_device_name`` or
  "cpu"; several joined by ", " when Slurm tasks got different GPUs).
- ``inference_date``: when the last probability store was written (UTC, ISO 8601).
- ``batch_size_used``: the smallest batch size predict's workers ended with
  (``inference.batch_size`` unless GPU memory pressure lowered it).
- ``processing_time_hours``: wall-clock hours spent in create_tiles, predict, merge and
  vectorize, every invocation counted (a resumed or rerun stage adds its time; shards run
  side by side each add theirs): the sum of the stages' ``seconds_total``.
- ``total_rts_area_km2``: the polygons' ``area_m2`` summed, written by vectorize.

Also ``deepseg_version`` and ``experiment`` (the resolved experiment, every default filled
in, as the last stage ran it; also written to ``logs/experiment.yaml``). Under ``stages``,
each stage's entry from its last invocation: start and end (UTC ISO 8601), ``seconds``,
``seconds_total`` over all its invocations, ``status`` ``done`` or ``failed`` (with the
error), and its counts (``units``, ``skipped`` = done before, ``done``, ``failed``, ...).

The file is rewritten atomically, so a crash leaves the previous version intact. In a gs://
run the bucket's copy is read first and the update is published only if nobody changed it
meanwhile; otherwise it is read again and the update applied again (``remote.Conflict``), so
workers never lose each other's entries. A stage is recorded ``done`` only once its outputs
are uploaded.
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

from .. import __version__
from ..config import Experiment
from ..storage.paths import RunPaths, atomic_path
from ..storage.remote import Conflict
from .manifest import fold

PIPELINE = ("create_tiles", "predict", "merge", "vectorize")  # processing_time_hours covers
SPEC_FIELDS = (
    "model_version",
    "model_checkpoint",
    "normalization_stats_hash",
    "inference_date",
    "basemap_version",
    "scales_used",
    "tta_config",
    "threshold",
    "n_tiles_processed",
    "n_tiles_with_detection",
    "total_rts_area_km2",
    "processing_time_hours",
    "gpu_type",
)


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


def modify_run_log(paths: RunPaths, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the latest run log and rewrite it atomically (again on a conflict,
    so ``change`` must compute from what it is given)."""

    def changed() -> str:
        data = read_run_log(paths)
        for key in SPEC_FIELDS:
            data.setdefault(key, None)
        change(data)
        data["deepseg_version"] = __version__
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    _rewrite(paths.run_log, changed)


def update_run_log(paths: RunPaths, **fields: Any) -> None:
    """Merge ``fields`` into the run log's top level and rewrite it atomically."""
    modify_run_log(paths, lambda data: data.update(fields))


def write_resolved_experiment(exp: Experiment, paths: RunPaths) -> Path:
    """Dump the experiment with every default filled in to ``logs/experiment.yaml``."""
    target = paths.logs / "experiment.yaml"
    _rewrite(target, lambda: yaml.safe_dump(exp.to_dict(), sort_keys=False))
    return target


def record_experiment(exp: Experiment, paths: RunPaths) -> None:
    """The experiment a stage runs with, resolved: ``logs/experiment.yaml`` and, in the run
    log, ``experiment`` and ``basemap_version``."""
    write_resolved_experiment(exp, paths)
    update_run_log(paths, experiment=exp.to_dict(), basemap_version=exp.input.basemap_version)


def _iso_seconds(stamp: str) -> str:
    return dt.datetime.fromisoformat(stamp).isoformat(timespec="seconds")


def totals(paths: RunPaths) -> dict[str, Any]:
    """The run-level counts and facts the manifests give (see the module docstring)."""
    predicted = [s for s in fold(paths, "predict").values() if s.status == "done"]
    staged = [s for s in fold(paths, "create_tiles").values() if s.status == "done"]
    devices = sorted({str(s.info["device"]) for s in predicted if "device" in s.info})
    written = [s.ended for s in predicted if s.outputs and s.ended]
    sizes = [int(s.info["batch_size"]) for s in predicted if "batch_size" in s.info]
    return {
        "n_tiles_processed": sum(int(s.counts.get("tiles", 0)) for s in predicted),
        "n_tiles_with_detection": sum(
            int(s.counts.get("tiles_with_detection", 0)) for s in predicted
        ),
        "n_tiles_skipped_no_data": sum(int(s.counts.get("tiles_no_data", 0)) for s in staged),
        "n_chunks_counts_unknown": sum(1 for s in predicted if "tiles" not in s.counts),
        "gpu_type": ", ".join(devices) or None,
        "inference_date": _iso_seconds(max(written)) if written else None,
        "batch_size_used": min(sizes) if sizes else None,
    }


def _processing_hours(stages: dict[str, Any]) -> float:
    seconds = sum(stages.get(s, {}).get("seconds_total", 0.0) for s in PIPELINE)
    return round(seconds / 3600, 6)


@contextlib.contextmanager
def record_stage(paths: RunPaths, stage: str, counts: dict[str, Any]) -> Iterator[None]:
    """Time the enclosed work and record it (with ``counts`` as filled in) in the run log,
    then refresh the run-level ``totals``."""
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
            run_totals = totals(paths)

            def add_entry(data: dict[str, Any]) -> None:
                stages = data.setdefault("stages", {})
                before = stages.get(stage, {}).get("seconds_total", 0.0)
                stages[stage] = {**entry, "seconds_total": round(before + entry["seconds"], 3)}
                data.update(run_totals, processing_time_hours=_processing_hours(stages))

            modify_run_log(paths, add_entry)

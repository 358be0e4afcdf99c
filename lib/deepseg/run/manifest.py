"""The per-stage manifest: what happened to each unit of work (a chunk or a region).

Every worker process appends records to its OWN journal,
``logs/manifest/{stage}/{worker}.jsonl`` (one JSON object per line, flushed and fsynced), so
concurrent Slurm array tasks never write the same file and a crash loses at most the line being
written. A record is ``{"unit", "status", "time", "run", "worker", "host", "slurm_job",
...}`` with status ``running`` (a unit started), ``done`` (its outputs were renamed into place;
``outputs`` lists them, relative to ``output.path``; ``counts`` are summed in the run log;
``info`` holds facts later stages read, e.g. a probability store's valid box;
``made_from`` a digest of the inputs and settings it was made from) or ``failed`` (``error``
holds the text).

``fold`` reads every journal and keeps one state per unit: its last record, the number of
attempts (``running`` records) and the first start. ``write_manifest`` stores that view as
``logs/{stage}_manifest.json`` (atomic). Times are UTC ISO 8601.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..storage.paths import RunPaths, atomic_path, publish

PUBLISH_EVERY_S = 30.0  # a gs:// run uploads a worker's journal at most this often (and at end)

Status = Literal["running", "done", "failed"]


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds (records from one worker stay ordered)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def slurm_ids() -> dict[str, str]:
    """The Slurm job, array job and array task ids of this process ({} outside Slurm)."""
    names = {
        "slurm_job": "SLURM_JOB_ID",
        "slurm_array_job": "SLURM_ARRAY_JOB_ID",
        "slurm_array_task": "SLURM_ARRAY_TASK_ID",
    }
    return {key: os.environ[var] for key, var in names.items() if os.environ.get(var)}


def worker_name() -> str:
    """A name unique to this process: Slurm job/task id when there is one, host and pid."""
    ids = slurm_ids()
    job = ids.get("slurm_array_job", ids.get("slurm_job"))
    task = ids.get("slurm_array_task")
    prefix = f"{job}_{task}-" if task else f"{job}-" if job else ""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}"


class Journal:
    """Append-only record file of one worker for one stage."""

    def __init__(self, paths: RunPaths, stage: str, run_id: str) -> None:
        self.run_id = run_id
        self.worker = worker_name()
        self.path = paths.logs / "manifest" / stage / f"{self.worker}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ids = {"host": socket.gethostname(), **slurm_ids()}
        self._published = time.monotonic()

    def record(self, unit: str, status: Status, **fields: Any) -> None:
        """Append one record and make it durable before returning."""
        line = {
            "unit": unit,
            "status": status,
            "time": now_iso(),
            "run": self.run_id,
            "worker": self.worker,
            **self._ids,
            **fields,
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if time.monotonic() - self._published > PUBLISH_EVERY_S:
            self.close()

    def close(self) -> None:
        """Publish the journal (to the bucket of a gs:// run; nothing to do locally)."""
        if self.path.exists():
            publish(self.path)
        self._published = time.monotonic()


@dataclass
class UnitState:
    """What is known of one unit after folding every journal."""

    unit: str
    status: Status
    attempts: int = 0
    started: str | None = None
    ended: str | None = None
    run: str | None = None
    worker: str | None = None
    host: str | None = None
    slurm_job: str | None = None
    slurm_array_job: str | None = None
    slurm_array_task: str | None = None
    outputs: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    made_from: str | None = None  # see ``digest``; None for units recovered from disk


def _journal_lines(folder: Path) -> Iterable[dict[str, Any]]:
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a worker killed while writing it


def fold(paths: RunPaths, stage: str) -> dict[str, UnitState]:
    """One state per unit from every journal of ``stage`` (in a gs:// run, every worker's,
    from the bucket): the latest record wins."""
    folder = paths.local_folder(paths.logs / "manifest" / stage, ".jsonl")
    states: dict[str, UnitState] = {}
    for rec in sorted(_journal_lines(folder), key=lambda r: r["time"]):
        state = states.setdefault(rec["unit"], UnitState(rec["unit"], rec["status"]))
        state.status = rec["status"]
        for key in ("run", "worker", "host", "slurm_job", "slurm_array_job", "slurm_array_task"):
            setattr(state, key, rec.get(key))
        if rec["status"] == "running":
            state.attempts += 1
            state.started = rec["time"]
            state.ended, state.error = None, None
        else:
            state.ended = rec["time"]
            state.error = rec.get("error")
            state.outputs = rec.get("outputs", [])
            state.counts = rec.get("counts", {})
            state.info = rec.get("info", {})
            state.made_from = rec.get("made_from")
    return states


def digest(*parts: Any) -> str:
    """A short stable digest of JSON-able ``parts``: what a unit was made from (its inputs'
    identities and the settings its outputs depend on)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def done_runs(paths: RunPaths, stage: str) -> dict[str, str]:
    """Unit -> the run that finished it, for the done units of ``stage``: what a later stage
    that reads them records as its input (a unit redone gets a new run)."""
    return {u: s.run or "" for u, s in fold(paths, stage).items() if s.status == "done"}


def unit_names(units: Sequence[str], most: int = 5) -> str:
    """The first few unit ids, for a one-line message ("none" for none)."""
    return ", ".join(units[:most]) + (" ..." if len(units) > most else "") or "none"


def write_manifest(paths: RunPaths, stage: str, states: dict[str, UnitState]) -> Path:
    """Store the folded view as ``logs/{stage}_manifest.json``, one record per unit."""
    target = paths.logs / f"{stage}_manifest.json"
    body = {"stage": stage, "units": [asdict(states[u]) for u in sorted(states)]}
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(body, indent=1) + "\n")
    return target

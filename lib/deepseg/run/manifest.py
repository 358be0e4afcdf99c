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

import contextlib
import datetime as dt
import gc
import hashlib
import json
import operator
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from ..storage.paths import RunPaths, atomic_path, publish

MANIFEST_BATCH = 10_000  # units encoded per call when the manifest is written
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


@dataclass(slots=True)
class UnitState:
    """What is known of one unit after folding every journal (its fields, as they are, are
    the unit's record in the manifest)."""

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


WHO = ("run", "worker", "host", "slurm_job", "slurm_array_job", "slurm_array_task")
MANIFEST_FIELDS = tuple(UnitState.__dataclass_fields__)


def _journal_records(path: Path) -> list[dict[str, Any]]:
    """A journal's records: parsed as one JSON array (one C-level parse, not one per line);
    line by line only when that fails (a line torn by a worker killed while writing it, or
    a NaN count, which only ``json`` reads)."""
    data = path.read_bytes().rstrip(b"\n")
    try:
        return orjson.loads(b"[" + data.replace(b"\n", b",") + b"]") if data else []
    except orjson.JSONDecodeError:
        records = []
        for line in data.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


def _fold_journals(journals: Iterable[Path]) -> dict[str, UnitState]:
    """Every record, in any order, folded: a unit's latest record says who and what (status),
    its latest done or failed record what it left, its ``running`` records how often and
    when it started. A journal's records are first reduced per unit by dict comprehensions
    (C speed; sorted by time first if a clock stepped back), so the Python work is per unit
    and journal, not per record; ``shared`` keeps one copy of the values many units repeat."""
    states: dict[str, UnitState] = {}
    latest: dict[str, str] = {}  # unit -> time of its latest record
    shared: dict[Any, Any] = {}
    for path in journals:
        records = _journal_records(path)
        times = [r["time"] for r in records]
        if times != sorted(times):
            records.sort(key=operator.itemgetter("time"))  # stable: ties keep their order
        last = {r["unit"]: r for r in records}
        ended = {r["unit"]: r for r in records if r["status"] != "running"}
        starts = [r for r in records if r["status"] == "running"]
        started = {r["unit"]: r["time"] for r in starts}
        attempts = Counter(r["unit"] for r in starts) if len(starts) > len(started) else None
        if states.keys().isdisjoint(last):  # the common case: units no journal before had
            for unit, rec in last.items():
                states[unit] = _first_state(unit, rec, ended.get(unit), started, attempts, shared)
            latest.update({unit: rec["time"] for unit, rec in last.items()})
            continue
        for unit, rec in last.items():
            state = states.get(unit)
            if state is None:
                states[unit] = _first_state(unit, rec, ended.get(unit), started, attempts, shared)
                latest[unit] = rec["time"]
                continue
            if rec["time"] >= latest.get(unit, ""):
                latest[unit], state.status = rec["time"], rec["status"]
                for key in WHO:
                    value = rec.get(key)
                    setattr(state, key, shared.setdefault(value, value))
            if unit in started:
                state.attempts += attempts[unit] if attempts is not None else 1
                state.started = max(state.started or "", started[unit])
            end = ended.get(unit)
            if end is not None and end["time"] >= (state.ended or ""):
                state.ended = end["time"]  # the latest end so far; settled below
                state.error, state.made_from = end.get("error"), end.get("made_from")
                state.outputs = end.get("outputs", [])
                state.counts, state.info = end.get("counts", {}), end.get("info", {})
    for state in states.values():  # a start after the last end: at work, or interrupted
        if state.started is not None and (state.ended is None or state.started > state.ended):
            state.ended, state.error = None, None
    return states


def _first_state(unit: str, rec: dict, end: dict | None, started: dict, attempts, shared):
    """A unit's state from the one journal it has appeared in so far (see the fold);
    ``attempts`` None: one ``running`` record per unit started."""
    who = tuple(map(rec.get, WHO))
    who = shared.setdefault(who, who)  # one worker's records repeat one of a few
    start = started.get(unit)
    n = attempts[unit] if attempts is not None else int(start is not None)
    if end is None:
        return UnitState(unit, rec["status"], n, start, None, *who)
    get = end.get
    return UnitState(  # every field by position: the fastest call, once per unit
        unit, rec["status"], n, start, end["time"], *who, get("outputs", []), get("counts", {}),
        get("info", {}), get("error"), get("made_from"),
    )  # fmt: skip


# (run folder, stage) -> (the journals' stat when folded, the states)
_folded: dict[tuple[Path, str], tuple[tuple, dict[str, UnitState]]] = {}


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection within the block: folding 10^6 units makes millions of
    acyclic objects, and each full collection would walk all of them again (twice the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fold(paths: RunPaths, stage: str) -> dict[str, UnitState]:
    """One state per unit from every journal of ``stage`` (in a gs:// run, every worker's,
    from the bucket): the latest record wins. One pass over the records, in any order, in
    memory per unit, not per record; folded again only when a journal changed (its size or
    time), so a driver asking many times reads a 10^6-unit stage once. Treat as read-only."""
    folder = paths.local_folder(paths.logs / "manifest" / stage, ".jsonl")
    journals = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    stats = [(p.name, p.stat()) for p in journals]
    key = tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats)
    cached = _folded.get((paths.root, stage))
    if cached is None or cached[0] != key:
        with paused_gc():
            cached = _folded[paths.root, stage] = (key, _fold_journals(journals))
    return dict(cached[1])


def journals_digest(paths: RunPaths, stage: str) -> str:
    """A digest of the journals as ``fold`` last read them (what a manifest was made from);
    asks nothing of the bucket, unlike ``fold``."""
    cached = _folded.get((paths.root, stage))
    return digest(cached[0]) if cached is not None else ""


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
    """Store the folded view as ``logs/{stage}_manifest.json``, one record per unit; kept as
    it is when it was written from the same journals (``journals`` in its first line)."""
    target = paths.logs / f"{stage}_manifest.json"
    made_from = journals_digest(paths, stage)
    header = f'{{"stage": {json.dumps(stage)}, "journals": "{made_from}", "units": ['
    if made_from and _first_line(target) == header:
        return target
    units = sorted(states)
    with paused_gc(), atomic_path(target) as tmp, open(tmp, "wb") as out:
        out.write(header.encode())  # then the units (dataclasses: encoded by orjson natively)
        for start in range(0, len(units), MANIFEST_BATCH):
            batch = [states[u] for u in units[start : start + MANIFEST_BATCH]]
            out.write((b"\n" if start == 0 else b",\n") + orjson.dumps(batch)[1:-1])
        out.write(b"\n]}\n")
    return target


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\n")
    except OSError:
        return ""

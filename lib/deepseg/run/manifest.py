"""The per-stage manifest: what happened to each unit of work (a chunk or a region).

``fold`` reads every worker's journal (see ``journal``) and keeps one state per unit: its
last record, the number of attempts (``running`` records) and the first start.
``write_manifest`` stores that view as ``logs/{stage}_manifest.json`` (atomic). Times are UTC
ISO 8601.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any

import orjson

from ..storage.paths import RunPaths, atomic_path
from .journal import WHO, Status, Who, read_journal

MANIFEST_BATCH = 10_000  # units encoded per call when the manifest is written
# The fold of journals this large (~100,000 units) is moved out of the cyclic garbage
# collector's sight (``gc.freeze``): its millions of acyclic objects would otherwise be walked
# again by each of the collector's next passes (~4 s of a 10^6-unit driver call). They are
# still freed, by reference counting, when the fold is replaced.
FREEZE_BYTES = 16 * 2**20
STATUSES = {s: s for s in ("running", "done", "failed")}  # one copy of each, not one per unit


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


def _fold_journals(journals: Iterable[Path]) -> dict[str, UnitState]:
    """Every record, in any order, folded: a unit's latest record says who and what (status),
    its latest done or failed record what it left, its ``running`` records how often and
    when it started. Each run of records under one header is reduced per unit at C speed
    (dicts and maps over its records), so the Python work is per unit, not per record."""
    states: dict[str, UnitState] = {}
    shared: dict[Who, Who] = {}  # one copy of each worker's who
    for path in journals:
        for who, records in read_journal(path):
            if records:
                _fold_part(records, who if who is None else shared.setdefault(who, who),
                           states, shared)  # fmt: skip
    for state in states.values():  # a start after the last end: at work, or interrupted
        if state.started is not None and (state.ended is None or state.started > state.ended):
            state.ended, state.error = None, None
    return states


def _fold_part(records: list[dict], who: Who | None, states: dict, shared: dict) -> None:
    """Fold one writer's records (``who`` None: each record names its writer) into
    ``states``; a unit's latest record so far is the later of its start and its end."""
    times = list(map(operator.itemgetter("time"), records))
    if times != sorted(times):  # a clock stepped back: sort (stable, ties keep their order)
        records = sorted(records, key=operator.itemgetter("time"))
    is_start = [r["status"] == "running" for r in records]
    unit_of = operator.itemgetter("unit")
    last = dict(zip(map(unit_of, records), records, strict=True))
    ends = list(compress(records, [not s for s in is_start]))
    ended = dict(zip(map(unit_of, ends), ends, strict=True))
    starts = list(compress(records, is_start))
    started = {r["unit"]: r["time"] for r in starts}
    attempts = Counter(map(unit_of, starts)) if len(starts) > len(started) else None
    seen = {} if states.keys().isdisjoint(last) else {u: r for u, r in last.items() if u in states}
    new = {u: r for u, r in last.items() if u not in seen} if seen else last
    states.update(_new_states(new, ended, started, attempts, who, shared))
    for unit, rec in seen.items():
        state = states[unit]
        if rec["time"] >= max(state.started or "", state.ended or ""):
            state.status = STATUSES.get(rec["status"], rec["status"])
            for key, value in zip(WHO, who or _who(rec, shared), strict=True):
                setattr(state, key, value)
        if unit in started:
            state.attempts += attempts[unit] if attempts is not None else 1
            state.started = max(state.started or "", started[unit])
        end = ended.get(unit)
        if end is not None and end["time"] >= (state.ended or ""):
            state.ended = end["time"]  # the latest end so far; settled after every journal
            state.error, state.made_from = end.get("error"), end.get("made_from")
            state.outputs = end.get("outputs", [])
            state.counts, state.info = end.get("counts", {}), end.get("info", {})


def _new_states(last: dict, ended: dict, started: dict, attempts, who, shared) -> Iterator:
    """(unit, state) of units no earlier part had, from their records in this part, built
    column by column (``attempts`` None: one ``running`` record per unit started)."""
    units = list(last)
    end = list(map(ended.get, units, repeat(NO_END)))
    start = list(map(started.get, units))
    if attempts is not None:
        count = list(map(attempts.__getitem__, units))
    else:
        count = [0 if s is None else 1 for s in start]
    status = [STATUSES.get(r["status"], r["status"]) for r in last.values()]
    if who is not None:
        whos = [repeat(value) for value in who]
    else:
        whos = list(zip(*[_who(r, shared) for r in last.values()], strict=True))
    get = dict.get
    columns = (
        [e.get("outputs", []) for e in end],
        [e.get("counts", {}) for e in end],
        [e.get("info", {}) for e in end],
        map(get, end, repeat("error")),
        map(get, end, repeat("made_from")),
    )
    ended_at = map(get, end, repeat("time"))
    states = map(UnitState, units, status, count, start, ended_at, *whos, *columns)
    return zip(units, states, strict=True)


NO_END: dict[str, Any] = {}  # the end record of a unit that has none (read, never written)


def _who(rec: dict, shared: dict) -> Who:
    """Who wrote a record that names its writer (a journal from before headers)."""
    who = tuple(map(rec.get, WHO))
    return shared.setdefault(who, who)


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
        _folded.pop((paths.root, stage), None)  # not two folds of a stage in memory at once
        big = sum(st.st_size for _, st in stats) >= FREEZE_BYTES
        if big:
            gc.collect()  # no garbage is frozen with the fold
        with paused_gc():
            cached = _folded[paths.root, stage] = (key, _fold_journals(journals))
            if big:
                gc.freeze()
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


def digest_after(*first: Any) -> Callable[..., str]:
    """``digest`` with its first parts encoded once: ``digest_after(*a)(*b) == digest(*a, *b)``.
    For digests per region or band that all start with every probability store of the run
    (10^5 entries: ~0.3 s to encode, where the rest takes microseconds)."""
    head = json.dumps(first, sort_keys=True, default=str)[:-1]  # open: "[a, b"
    hashed = hashlib.sha256(head.encode())

    def rest(*more: Any) -> str:
        tail = json.dumps(more, sort_keys=True, default=str)[1:]  # "c, d]"
        h = hashed.copy()
        h.update(((", " if first and more else "") + tail).encode())
        return h.hexdigest()[:16]

    return rest


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

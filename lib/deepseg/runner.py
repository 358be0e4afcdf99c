"""Running a stage: its units of work, which of them are done, and the loop every worker runs.

A stage (``tiling.STAGE``, ``predicting.STAGE``, ...) lists its units (chunk ids or region
names, sorted) and makes a per-process worker (inputs opened, model loaded) whose ``run(unit)``
writes that unit's outputs atomically. A unit is *done* when the manifest holds a ``done``
record whose outputs all exist (and, if it wrote any, so do those the current settings
expect, e.g. a product newly added to ``merge.products``), or, with no record, when its
expected outputs exist (a file is renamed into place only once complete, so a kill between
the rename and the record loses nothing). A done record whose ``made_from`` (the digest of
the inputs and settings the stage's ``made_from`` names, e.g. the tile list, the model, the
threshold or the earlier stage's runs of its chunks) differs from today's is redone, so an edited
experiment or a redone earlier stage never leaves stale outputs. With ``--force`` only ``done``
records of this invocation (``run_id``) count, so a requeued task does not redo what it
already redid.

The driver (``run``) selects the units (``--shard I/N`` takes every N-th, deterministically),
hands the pending ones to the executor chosen by ``cluster.executor`` (``EXECUTORS``), then
folds the journals into ``logs/{stage}_manifest.json``, prints done / failed / pending and
raises a one-line error naming the failed units when any failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .config import Experiment
from .errors import DeepSegError
from .manifest import Journal, UnitState, fold, unit_names, write_manifest
from .outputs import RunPaths
from .progress import progress
from .runlog import record_experiment, record_stage

log = logging.getLogger(__name__)
SYSTEMATIC_FAILURES = 3  # a worker stops after this many failures with no success in between


@dataclass
class UnitResult:
    """What one unit wrote (absolute paths, renamed into place), its counts (summed over the
    stage in the run log) and facts later stages may read from the manifest (``info``)."""

    outputs: list[Path] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Worker(Protocol):
    def run(self, unit: str) -> UnitResult: ...


# What a worker reports: ("start", unit, None), ("done", unit, UnitResult) or
# ("failed", unit, exception). A worker that pipelines units (reading ahead, writing behind)
# has ``run_all(units)`` yielding these; the others are driven one ``run`` at a time.
Event = tuple[str, str, Any]


def events(worker: Worker, units: Sequence[str]) -> Iterator[Event]:
    """The worker's events for ``units``, in order."""
    if hasattr(worker, "run_all"):
        yield from worker.run_all(units)
        return
    for unit in units:
        yield "start", unit, None
        try:
            result = worker.run(unit)
        except Exception as exc:  # noqa: BLE001 - reported as the unit's failure
            yield "failed", unit, exc
            continue
        yield "done", unit, result


@dataclass(frozen=True)
class Stage:
    """One stage: how to list its units, what a finished unit leaves, how to work on one."""

    name: str  # as in the run log and the manifest, e.g. "predict"
    units: Callable[[Experiment], list[str]]  # every unit of the run, sorted
    expected: Callable[[Experiment, str], list[Path]]  # what a unit with work to do writes
    worker: Callable[[Experiment], Worker]  # per-process set-up: open inputs, load the model
    check: Callable[[Experiment], None] | None = None  # first, writes nothing: refuse early
    prepare: Callable[[Experiment], None] | None = None  # driver-side, once units are known
    # driver-side step after every unit is done, e.g. gathering the units' parts into one
    # file; its argument says whether to redo it (units ran now, or --force)
    finish: Callable[[Experiment, bool], dict[str, Any]] | None = None
    uses_gpu: bool = False
    # what a unit is made from: called once per process, returns unit -> digest
    made_from: Callable[[Experiment], Callable[[str], str]] | None = None


def made_from(stage: Stage, exp: Experiment) -> Callable[[str], str | None]:
    """Unit -> the digest of what it would be made from now (None: the stage keeps none)."""
    return stage.made_from(exp) if stage.made_from is not None else lambda unit: None


def is_stale(state: UnitState | None, current: str | None) -> bool:
    """Whether a done unit was made from other inputs or settings than ``current``."""
    if state is None or state.status != "done" or None in (current, state.made_from):
        return False
    return state.made_from != current


def new_run_id() -> str:
    """An id for one invocation of a stage (UTC time to the microsecond)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def is_done(
    state: UnitState | None,
    expected: Sequence[Path],
    paths: RunPaths,
    run_id: str,
    force: bool,
    current: str | None = None,
) -> bool:
    """See the module docstring; ``current`` is the unit's ``made_from`` digest today."""
    if is_stale(state, current):
        return False
    if state is not None and state.status == "done" and (not force or state.run == run_id):
        recorded = all(paths.done(paths.root / out) for out in state.outputs)
        return recorded and (not state.outputs or all(paths.done(p) for p in expected))
    return not force and bool(expected) and all(paths.done(p) for p in expected)


def pending_units(
    stage: Stage,
    exp: Experiment,
    units: Sequence[str],
    run_id: str,
    force: bool,
    current: Callable[[str], str | None] | None = None,
) -> list[str]:
    """The units of ``units`` that are not done; ``current`` is ``made_from(stage, exp)``
    when the caller has it already (it hashes the model files, reads the tile list)."""
    paths = RunPaths.of(exp)
    states = fold(paths, stage.name)
    current = current or made_from(stage, exp)
    return [
        u
        for u in units
        if not is_done(states.get(u), stage.expected(exp, u), paths, run_id, force, current(u))
    ]


def work(stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool) -> int:
    """Work on ``units`` in order, skipping done ones; returns how many failed.

    Each unit's start and end go to this worker's journal. A failing unit is recorded and the
    loop goes on, unless the failures look systematic (``SYSTEMATIC_FAILURES`` in a row from
    the start), which raise. Errors in the worker's set-up are not per unit: they raise.
    """
    paths = RunPaths.of(exp)
    journal = Journal(paths, stage.name, run_id)
    current = made_from(stage, exp)
    todo = pending_units(stage, exp, units, run_id, force, current)
    # a requeued task may find a unit its first run finished but was stopped before recording
    done = [u for u in units if u not in set(todo)]
    _record_recovered(stage, exp, done, run_id, current, journal)
    if not todo:
        journal.close()
        return 0
    worker = stage.worker(exp)
    failed = succeeded = 0
    stream = events(worker, todo)
    try:
        ends = _journal_starts(stream, journal)
        for kind, unit, payload in progress(ends, len(todo), f"{stage.name}: units", log):
            if kind == "done":
                succeeded += 1
                outputs = [str(p.relative_to(paths.root)) for p in payload.outputs]
                journal.record(
                    unit,
                    "done",
                    outputs=outputs,
                    counts=payload.counts,
                    info=payload.info,
                    made_from=current(unit),
                )
                continue
            failed += 1
            journal.record(unit, "failed", error=_one_line(payload))
            log.error("%s: unit %s failed: %s", stage.name, unit, _one_line(payload))
            log.debug("%s", "".join(traceback.format_exception(payload)))
            if not succeeded and failed >= SYSTEMATIC_FAILURES:
                raise DeepSegError(
                    f"{stage.name}: the first {failed} units all failed, last {unit}: "
                    f"{_one_line(payload)}"
                ) from payload
    finally:
        stream.close()  # a pipelining worker stops its background I/O
        journal.close()
    return failed


def _journal_starts(stream: Iterator[Event], journal: Journal) -> Iterator[Event]:
    """Record each unit's start; pass on the ends (done or failed)."""
    for event in stream:
        if event[0] == "start":
            journal.record(event[1], "running")
        else:
            yield event


def _one_line(exc: BaseException) -> str:
    """The error as one line: its last line when it has several (TorchScript, CUDA and GDAL
    put the actual error last, after a traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if isinstance(exc, DeepSegError) else f"{type(exc).__name__}: {text}"


def select_shard(units: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Shard I of N (0-based): units I, I+N, I+2N, ... of the sorted list."""
    if shard is None:
        return units
    index, count = shard
    return units[index::count]


def summarize(stage: Stage, exp: Experiment, units: Sequence[str], run_id: str) -> dict[str, Any]:
    """Fold the journals, write the manifest and count done / failed / pending units; the
    units' counts are summed over those done by this invocation (``run_id``)."""
    paths = RunPaths.of(exp)
    states = fold(paths, stage.name)
    manifest = write_manifest(paths, stage.name, states)
    selected = [states.get(u) for u in units]
    failed = [s for s in selected if s is not None and s.status == "failed"]
    done = [s for s in selected if s is not None and s.status == "done"]
    counts: dict[str, Any] = {}
    for state in (s for s in done if s.run == run_id):
        for key, value in state.counts.items():
            if isinstance(value, (int, float)):
                counts[key] = counts.get(key, 0) + value
    ended = {s.unit for s in failed + done}
    return {
        "units": len(units),
        "done": len(done),
        "failed": [s.unit for s in failed],
        "pending": len(units) - len(done) - len(failed),
        "unfinished": [u for u in units if u not in ended],  # never started, or interrupted
        "manifest": manifest,
        "errors": {s.unit: s.error for s in failed},
        "counts": counts,
    }


def run(
    stage: Stage, exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Run one stage for ``exp`` with its executor; raise DeepSegError if a unit failed.

    Returns the summary: ``units``, ``skipped`` (done before), ``done``, ``failed`` (unit
    ids), ``pending``, ``manifest`` (path), ``errors`` and ``counts`` (what this run did).
    """
    from .executors import EXECUTORS  # the Slurm executor imports this module

    paths = RunPaths.of(exp)
    paths.refresh()  # other workers may have finished units since this process last looked
    if stage.check is not None:
        stage.check(exp)
    units = select_shard(stage.units(exp), shard)
    if stage.prepare is not None:
        stage.prepare(exp)
    run_id = new_run_id()
    current = made_from(stage, exp)  # what the earlier stages and settings are now
    _log_stale(stage, exp, units, current)
    todo = pending_units(stage, exp, units, run_id, force, current)
    _record_recovered(stage, exp, [u for u in units if u not in set(todo)], run_id, current)
    log.info(
        "%s: %d unit(s), %d done already, %d to do (%s executor)",
        stage.name,
        len(units),
        len(units) - len(todo),
        len(todo),
        exp.cluster.executor,
    )
    entry: dict[str, Any] = {"units": len(units), "skipped": len(units) - len(todo)}
    record_experiment(exp, paths)
    with record_stage(paths, stage.name, entry):
        if todo:
            EXECUTORS[exp.cluster.executor](stage, exp, todo, run_id, force)
        summary = summarize(stage, exp, units, run_id)
        summary["skipped"] = entry["skipped"]
        entry.update(done=summary["done"], failed=len(summary["failed"]), **summary["counts"])
        _report(stage, summary)
        if stage.finish is not None and (
            shard is None or not _unfinished(stage, exp, run_id, current)
        ):
            entry.update(stage.finish(exp, bool(todo) or force))
    return summary


def _record_recovered(
    stage: Stage,
    exp: Experiment,
    done: Sequence[str],
    run_id: str,
    current: Callable[[str], str | None],
    journal: Journal | None = None,
) -> None:
    """Record as done the units whose outputs are complete on disk without a done record
    (a worker killed between the rename and the record), so the manifest tells the truth."""
    paths = RunPaths.of(exp)
    states = fold(paths, stage.name)
    missing = [u for u in done if u not in states or states[u].status != "done"]
    if not missing:
        return
    journal = journal or Journal(paths, stage.name, run_id)
    for unit in missing:  # the best guess: made from today's inputs and settings (current)
        outputs = [str(p.relative_to(paths.root)) for p in stage.expected(exp, unit)]
        journal.record(unit, "done", outputs=outputs, recovered=True, made_from=current(unit))
    log.info("%s: %d unit(s) found complete on disk, recorded as done", stage.name, len(missing))


def _log_stale(
    stage: Stage, exp: Experiment, units: Sequence[str], current: Callable[[str], str | None]
) -> None:
    """Say which done units will be redone because their inputs or settings changed."""
    states = fold(RunPaths.of(exp), stage.name)
    stale = [u for u in units if is_stale(states.get(u), current(u))]
    if stale:
        log.warning(
            "%s: %d unit(s) were made from other inputs or settings than the experiment's now "
            "(%s); redoing them",
            stage.name,
            len(stale),
            unit_names(stale),
        )


def _unfinished(
    stage: Stage, exp: Experiment, run_id: str, current: Callable[[str], str | None]
) -> bool:
    """Whether any unit of the whole stage (every shard) is still to do."""
    return bool(pending_units(stage, exp, stage.units(exp), run_id, False, current))


def _report(stage: Stage, summary: dict[str, Any]) -> None:
    log.info(
        "%s: %d done, %d failed, %d pending of %d unit(s); manifest %s",
        stage.name,
        summary["done"],
        len(summary["failed"]),
        summary["pending"],
        summary["units"],
        summary["manifest"],
    )
    if summary["failed"] or summary["pending"]:
        for unit, error in list(summary["errors"].items())[:20]:
            log.error("%s: failed unit %s: %s", stage.name, unit, error)
        failed, unfinished = summary["failed"], summary["unfinished"]
        raise DeepSegError(
            f"{stage.name}: {len(failed)} unit(s) failed ({unit_names(failed)}) and "
            f"{summary['pending']} did not finish ({unit_names(unfinished)}); "
            f"details in {summary['manifest']}; rerun the stage to retry them (finished units "
            "are kept)"
        )

"""A stage and its units of work: which units are done, which are stale, which to do.

A stage (``stages.tiles.STAGE``, ``stages.predict.STAGE``, ...) lists its units (chunk ids or
region names, sorted) and makes a per-process worker (inputs opened, model loaded) whose
``run(unit)`` writes that unit's outputs atomically. A unit is *done* when the manifest holds a
``done`` record whose outputs all exist (and, if it wrote any, so do those the current settings
expect, e.g. a product newly added to ``merge.products``), or, with no record, when its
expected outputs exist (a file is renamed into place only once complete, so a kill between
the rename and the record loses nothing). A done record whose ``made_from`` (the digest of
the inputs and settings the stage's ``made_from`` names, e.g. the tile list, the model, the
threshold or the earlier stage's runs of its chunks) differs from today's is redone, so an edited
experiment or a redone earlier stage never leaves stale outputs. With ``--force`` only ``done``
records of this invocation (``run_id``) count, so a requeued task does not redo what it
already redid. The loop a worker runs is ``work``; the driver is ``driver``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Experiment
from ..storage.paths import RunPaths
from .manifest import UnitState, fold, paused_gc


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
    # what a unit with work to do writes, relative to output.path ("predictions/c1.kea")
    expected: Callable[[Experiment, str], list[str]]
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
    """Whether a unit's outputs on disk were made from other inputs or settings than
    ``current``. Its latest done record says what they were made from; a failed record
    carries on what the failed attempt left in place, and an attempt interrupted while
    redoing a stale unit may have left the old outputs: it is stale too."""
    if state is None or None in (current, state.made_from):
        return False
    return state.made_from != current


def new_run_id() -> str:
    """An id for one invocation of a stage (UTC time to the microsecond)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def is_done(
    state: UnitState | None,
    expected: Sequence[str],
    paths: RunPaths,
    run_id: str,
    force: bool,
    current: str | None = None,
    done: Callable[[str], bool] | None = None,
) -> bool:
    """See the module docstring; ``current`` is the unit's ``made_from`` digest today,
    ``done`` answers whether an output (relative to ``paths.root``) is finished
    (``paths.done_checker()``)."""
    if is_stale(state, current):
        return False
    done = done or paths.done_checker()
    if state is not None and state.status == "done" and (not force or state.run == run_id):
        recorded = all(done(out) for out in state.outputs)
        return recorded and (not state.outputs or all(done(p) for p in expected))
    return not force and bool(expected) and all(done(p) for p in expected)


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
    done = paths.done_checker()
    todo = []
    with paused_gc():
        for u in units:
            state, expected = states.get(u), stage.expected(exp, u)
            if state is None:  # never recorded (every unit of a first run): its outputs say
                finished = not force and bool(expected) and all(map(done, expected))
            else:
                finished = is_done(state, expected, paths, run_id, force, current(u), done)
            if not finished:
                todo.append(u)
    return todo


def select_shard(units: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Shard I of N (0-based): units I, I+N, I+2N, ... of the sorted list."""
    if shard is None:
        return units
    index, count = shard
    return units[index::count]

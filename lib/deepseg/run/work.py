"""The loop every worker runs over its share of a stage's units (locally or as a Slurm task)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator, Sequence

from ..config import Experiment
from ..core.errors import DeepSegError, brief
from ..core.progress import progress
from ..storage.partials import sweep_dead_partials
from ..storage.paths import RunPaths
from .journal import Journal
from .manifest import fold
from .stage import Event, Stage, events, made_from, pending_units

log = logging.getLogger(__name__)
SYSTEMATIC_FAILURES = 3  # a worker stops after this many failures with no success in between


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
    kept = _kept_made_from(fold(paths, stage.name), todo)  # before this worker records anything
    # a requeued task may find a unit its first run finished but was stopped before recording
    waiting = set(todo)
    done = [u for u in units if u not in waiting]
    record_recovered(stage, exp, done, run_id, current, journal)
    if not todo:
        journal.close()
        return 0
    sweep_dead_partials({(paths.root / p).parent for u in todo for p in stage.expected(exp, u)})
    worker = stage.worker(exp)
    failed = succeeded = 0
    stream = events(worker, todo)
    try:
        ends = _journal_starts(stream, journal)
        for kind, unit, payload in progress(ends, len(todo), f"{stage.name}: units", log):
            if kind == "done":
                succeeded += 1
                outputs = [paths.relative(p) for p in payload.outputs]
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
            journal.record(
                unit, "failed", error=brief(payload, named=True), made_from=kept.get(unit)
            )
            log.error("%s: unit %s failed: %s", stage.name, unit, brief(payload, named=True))
            log.debug("%s", "".join(traceback.format_exception(payload)))
            if not succeeded and failed >= SYSTEMATIC_FAILURES:
                raise DeepSegError(
                    f"{stage.name}: the first {failed} units all failed, last {unit}: "
                    f"{brief(payload, named=True)}"
                ) from payload
    finally:
        stream.close()  # a pipelining worker stops its background I/O
        journal.close()
    return failed


def _kept_made_from(states: dict, todo: Sequence[str]) -> dict[str, str | None]:
    """Unit -> what its outputs on disk were made from, which a failed attempt leaves in
    place (its failed record carries it on; see ``stage.is_stale``)."""
    return {u: states[u].made_from for u in todo if u in states}


def _journal_starts(stream: Iterator[Event], journal: Journal) -> Iterator[Event]:
    """Record each unit's start; pass on the ends (done or failed)."""
    for event in stream:
        if event[0] == "start":
            journal.record(event[1], "running")
        else:
            yield event


def record_recovered(
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
        outputs = stage.expected(exp, unit)
        journal.record(unit, "done", outputs=outputs, recovered=True, made_from=current(unit))
    log.info("%s: %d unit(s) found complete on disk, recorded as done", stage.name, len(missing))

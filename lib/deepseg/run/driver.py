"""The driver of a stage: select the units, hand the pending ones to an executor, report.

``run`` selects the units (``--shard I/N`` takes every N-th, deterministically), hands the
pending ones to the executor chosen by ``cluster.executor`` (``executors.EXECUTORS``), then
folds the journals into ``logs/{stage}_manifest.json``, prints done / failed / pending and
raises a one-line error naming the failed units when any failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import Experiment
from ..core.errors import DeepSegError
from ..storage.paths import RunPaths
from .executors import EXECUTORS
from .manifest import fold, unit_names, write_manifest
from .runlog import record_experiment, record_stage
from .stage import Stage, is_stale, made_from, new_run_id, pending_units, select_shard
from .work import record_recovered

log = logging.getLogger(__name__)


def run(
    stage: Stage, exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Run one stage for ``exp`` with its executor; raise DeepSegError if a unit failed.

    Returns the summary: ``units``, ``skipped`` (done before), ``done``, ``failed`` (unit
    ids), ``pending``, ``manifest`` (path), ``errors`` and ``counts`` (what this run did).
    """
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
    waiting = set(todo)
    record_recovered(stage, exp, [u for u in units if u not in waiting], run_id, current)
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


def summarize(stage: Stage, exp: Experiment, units: Sequence[str], run_id: str) -> dict[str, Any]:
    """Fold the journals, write the manifest and count done / failed / pending units; the
    units' counts are summed over those done by this invocation (``run_id``)."""
    paths = RunPaths.of(exp)
    states = fold(paths, stage.name)
    manifest = write_manifest(paths, stage.name, states)
    selected = list(map(states.get, units))
    failed = [s for s in selected if s is not None and s.status == "failed"]
    done = [s for s in selected if s is not None and s.status == "done"]
    mine = [s.counts for s in done if s.run == run_id]
    counts: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in mine for k in c):  # per key, not per unit and key
        numbers = [v for v in (c.get(key) for c in mine) if isinstance(v, (int, float))]
        if numbers:
            counts[key] = sum(numbers)
    return {
        "units": len(units),
        "done": len(done),
        "failed": [s.unit for s in failed],
        "pending": len(units) - len(done) - len(failed),
        "unfinished": [  # never started, or interrupted
            u for u, s in zip(units, selected, strict=True) if s is None or s.status == "running"
        ],
        "manifest": manifest,
        "errors": {s.unit: s.error for s in failed},
        "counts": counts,
    }


def _log_stale(
    stage: Stage, exp: Experiment, units: Sequence[str], current: Callable[[str], str | None]
) -> None:
    """Say which done units will be redone because their inputs or settings changed."""
    states = fold(RunPaths.of(exp), stage.name)
    stale = [u for u in units if is_stale(states.get(u), current(u))] if states else []
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

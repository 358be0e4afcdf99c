"""``cluster.executor: slurm``: a stage's units as Slurm job arrays, through submitit.

Units are cut into tasks of ``cluster.slurm.units_per_task`` consecutive units (null: as few
per task as keep the whole stage in one array of at most ``max_array_size`` tasks) and tasks
into arrays of at most ``max_array_size`` (many sites cap arrays at 1001). When
``array_parallelism`` is set, each further array starts only after the previous one ended
(``afterany``), so no more than that many tasks ever run at once.

Each task runs ``work.work`` on its units. It is ``Checkpointable``: on Slurm's USR2 before
the time limit, or on preemption, submitit requeues it with the same arguments, and the
restarted task skips the units already done, continuing from the first unfinished one. The
driver polls the tasks (submitit reads ``sacct``), logs progress with an ETA, resubmits what
is unfinished ``retries`` times, and logs every task that did not complete with its log file.
GPUs are requested only for stages that use them, and only when ``gpus_per_node`` > 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from ...config import Experiment, SlurmConfig
from ...core.errors import DeepSegError, brief
from ...core.progress import format_seconds, setup_logging
from ...storage.paths import RunPaths
from ..manifest import fold
from ..stage import Stage, pending_units
from ..work import work
from .slurm_queue import (
    CANCEL_WAIT_S,
    cancel,
    forget_arrays,
    in_queue,
    record_array,
    recorded_arrays,
    wait_until_gone,
)

log = logging.getLogger(__name__)
MAX_TIMEOUT_REQUEUES = 3  # submitit requeues a task that hit its time limit this often


class UnitTask(submitit.helpers.Checkpointable):
    """One array task: ``work.work`` on its units; requeued as is, it resumes."""

    def __call__(
        self, stage: Stage, exp: Experiment, units: list[str], run_id: str, force: bool
    ) -> int:
        setup_logging()
        return work(stage, exp, units, run_id, force)


def split_units(units: Sequence[str], cfg: SlurmConfig) -> list[list[list[str]]]:
    """Units -> arrays (at most ``max_array_size`` tasks each) -> tasks -> unit ids."""
    per_task = cfg.units_per_task or math.ceil(len(units) / cfg.max_array_size)
    tasks = [list(units[i : i + per_task]) for i in range(0, len(units), per_task)]
    size = cfg.max_array_size
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _extra_parameters(lines: Sequence[str]) -> dict[str, Any]:
    """``["--qos=high", "--exclusive"]`` -> {"qos": "high", "exclusive": True}."""
    out: dict[str, Any] = {}
    for line in lines:
        flag = line.strip().removeprefix("#SBATCH").strip()
        if not flag.startswith("--"):
            raise DeepSegError(
                f"cluster.slurm.extra_sbatch: expected long options like --qos=high, got {line!r}"
            )
        key, sep, value = flag[2:].partition("=")
        if not sep and " " in key:
            key, _, value = key.partition(" ")
        out[key.strip()] = value.strip() if value.strip() else True
    return out


def slurm_parameters(
    stage: Stage, exp: Experiment, n_tasks: int, dependency: str | None = None
) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one array of ``n_tasks`` tasks of ``stage``."""
    cfg = exp.cluster.slurm
    params: dict[str, Any] = {
        "job_name": f"deepseg-{exp.name}-{stage.name}",
        "time": cfg.time_min,
        "cpus_per_task": cfg.cpus_per_task,
        "array_parallelism": cfg.array_parallelism or n_tasks,
        "setup": list(cfg.setup),
        "additional_parameters": _extra_parameters(cfg.extra_sbatch),
    }
    optional = {
        "partition": cfg.partition,
        "account": cfg.account,
        "mem": f"{cfg.mem_gb}GB" if cfg.mem_gb else None,
        "gpus_per_node": cfg.gpus_per_node if stage.uses_gpu and cfg.gpus_per_node else None,
        "dependency": dependency,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def make_executor(folder: Path, params: dict[str, Any]) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    executor.update_parameters(**params)
    return executor


def submit_arrays(
    stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool
) -> list[tuple[submitit.Job, list[str]]]:
    """Submit every array; returns each task's job and its units. The tasks' logs and
    pickles go to one folder that exists before ``sbatch`` runs: in a ``%j`` folder (made by
    submitit once sbatch has returned) a task that starts at once cannot open its log and
    fails without output (seen on an idle cluster)."""
    folder = RunPaths.of(exp).logs / "slurm" / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    submitted: list[tuple[submitit.Job, list[str]]] = []
    previous: str | None = None
    for tasks in split_units(units, exp.cluster.slurm):
        dependency = (
            f"afterany:{previous}" if previous and exp.cluster.slurm.array_parallelism else None
        )
        executor = make_executor(folder, slurm_parameters(stage, exp, len(tasks), dependency))
        jobs = executor.map_array(
            UnitTask(),
            [stage] * len(tasks),
            [exp] * len(tasks),
            tasks,
            [run_id] * len(tasks),
            [force] * len(tasks),
        )
        previous = jobs[0].job_id.split("_")[0]
        record_array(RunPaths.of(exp), stage.name, previous, len(jobs))
        log.info("%s: submitted array %s (%d task(s))", stage.name, previous, len(jobs))
        submitted.extend(zip(jobs, tasks, strict=True))
    return submitted


def wait_for(
    stage: Stage, exp: Experiment, jobs: list[tuple[submitit.Job, list[str]]], total: int
) -> None:
    """Poll until every task has ended, logging units done with rate and ETA."""
    paths, start = RunPaths.of(exp), time.monotonic()
    first = {u for _, task in jobs for u in task}
    while True:
        running = [job for job, _ in jobs if not job.done()]
        done = _done_count(paths, stage.name, first)
        elapsed = time.monotonic() - start
        eta = elapsed / done * (total - done) if done else float("nan")
        log.info(
            "%s: %d/%d units done, %d task(s) still queued or running, elapsed %s, ETA %s",
            stage.name,
            done,
            total,
            len(running),
            format_seconds(elapsed),
            format_seconds(eta) if done else "?",
        )
        if not running:
            return
        time.sleep(exp.cluster.slurm.poll_s)


def _done_count(paths: RunPaths, stage: str, units: set[str]) -> int:
    """How many of ``units`` are done (the fold is not kept past the call: the next poll's
    would otherwise be made while this one is still held, two in memory)."""
    states = fold(paths, stage)
    return sum(1 for u in units if u in states and states[u].status == "done")


def report_tasks(stage: Stage, jobs: list[tuple[submitit.Job, list[str]]]) -> None:
    """Log each task that did not end well (it raised, was cancelled or killed, or some of its
    units failed) with its units and log file. The outcome comes from the task's result file,
    else from sacct (Slurm's state lags behind a task that has just written its result)."""
    for job, task in jobs:
        try:
            failed_units = job.result()
            problem = f"finished with {failed_units} failed unit(s)" if failed_units else ""
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
            problem = f"ended {job.state}: {' '.join(str(exc).split())[:300]}"
        if problem:
            log.error(
                "%s: task %s %s (units %s .. %s); log %s",
                stage.name,
                job.job_id,
                problem,
                task[0],
                task[-1],
                job.paths.stderr,
            )


def submit_and_wait(
    stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool
) -> None:
    """Run ``units`` as arrays; resubmit what is unfinished up to ``retries`` times.

    Arrays of an earlier driver of this stage still in the queue are waited for first, and
    ``units`` narrowed to what they left undone. Interrupted (Ctrl-C, SIGTERM, SIGUSR1, see
    ``core.stopping``) or failing, the driver cancels the arrays it submitted and waits until
    their tasks have left the queue before it raises (see ``slurm_queue``)."""
    todo = list(units)
    if wait_for_earlier_arrays(stage, exp):
        todo = pending_units(stage, exp, todo, run_id, force)
    submitted: list[tuple[submitit.Job, list[str]]] = []
    try:
        for attempt in range(exp.cluster.slurm.retries + 1):
            if not todo:
                break
            if attempt:
                log.warning("%s: resubmitting %d unfinished unit(s)", stage.name, len(todo))
            jobs = submit_arrays(stage, exp, todo, run_id, force)
            submitted += jobs
            wait_for(stage, exp, jobs, len(todo))
            report_tasks(stage, jobs)
            todo = pending_units(stage, exp, todo, run_id, force)
    except BaseException as exc:
        cancel_submitted(stage, exp, submitted, exc)
        raise
    forget_arrays(RunPaths.of(exp), stage.name, _arrays_of(submitted))


def wait_for_earlier_arrays(stage: Stage, exp: Experiment) -> bool:
    """Wait until no array recorded for ``stage`` holds a task; True if any did."""
    paths = RunPaths.of(exp)
    recorded = recorded_arrays(paths, stage.name)
    live = in_queue(recorded)
    if live:
        wait_until_gone(stage.name, list(live), exp.cluster.slurm.poll_s)
    forget_arrays(paths, stage.name, recorded)
    return bool(live)


def cancel_submitted(
    stage: Stage,
    exp: Experiment,
    submitted: list[tuple[submitit.Job, list[str]]],
    why: BaseException,
) -> None:
    """``scancel`` this driver's arrays and wait (at most CANCEL_WAIT_S) for them to go."""
    arrays = _arrays_of(submitted)
    if not arrays:
        return
    log.warning(
        "%s: %s; cancelling array(s) %s", stage.name, brief(why, named=True), ", ".join(arrays)
    )
    cancel(arrays)
    left = wait_until_gone(stage.name, arrays, min(exp.cluster.slurm.poll_s, 2.0), CANCEL_WAIT_S)
    if left:
        log.error("%s: array(s) %s still in the queue after scancel", stage.name, sorted(left))
    forget_arrays(RunPaths.of(exp), stage.name, set(arrays) - left)


def _arrays_of(submitted: list[tuple[submitit.Job, list[str]]]) -> list[str]:
    return sorted({job.job_id.split("_")[0] for job, _ in submitted})

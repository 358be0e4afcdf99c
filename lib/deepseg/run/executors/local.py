"""The local executor: the pending units worked on here, in this process or, with
``cluster.local_processes`` N > 1, in N spawned processes on this machine (each its own
worker with its own journal, unit i going to process i mod N), for the CPU stages: a stage
that uses the GPU runs in this process (predict spreads its I/O with ``io_workers``)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence

import cloudpickle

from ...config import Experiment
from ...core.progress import setup_logging
from ...core.stopping import exit_with_parent
from ...storage.paths import RunPaths
from ..stage import Stage
from ..work import work


def processes_for(stage: Stage, exp: Experiment, units: Sequence[str]) -> int:
    """How many processes work on ``units``: 1 for a GPU stage, else up to the setting."""
    return 1 if stage.uses_gpu else max(1, min(exp.cluster.local_processes, len(units)))


def _start_process(level: int, driver: int) -> None:
    # Ctrl-C reaches the whole process group: the driver alone handles it (and terminates
    # the processes), so no process prints its own traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(driver)  # a driver killed with SIGKILL takes its processes with it
    setup_logging(verbose=level <= logging.DEBUG)


def _work_pickled(call: bytes) -> int:
    """``work(*args)`` from cloudpickle bytes (a stage's lambdas do not pickle otherwise)."""
    args = cloudpickle.loads(call)
    return work(*args)


def run_local(
    stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool
) -> None:
    """Work on every unit here: in order, in one process or several (see the module)."""
    n = processes_for(stage, exp, units)
    if n == 1:
        work(stage, exp, units, run_id, force)
        return
    level = logging.getLogger().getEffectiveLevel()
    context = multiprocessing.get_context("spawn")  # no forked GDAL, HDF5 or torch state
    # a Pool, not a ProcessPoolExecutor: leaving it early (an error, a stop signal) terminates
    # the processes instead of waiting for them to finish their shares
    with context.Pool(n, _start_process, (level, os.getpid())) as pool:
        try:
            calls = [cloudpickle.dumps((stage, exp, units[i::n], run_id, force)) for i in range(n)]
            shares = [pool.apply_async(_work_pickled, (call,)) for call in calls]
            for share in shares:
                share.get()  # a worker's set-up error or systematic failures raise here
        finally:
            RunPaths.of(exp).refresh()  # the processes' journals: list the bucket again

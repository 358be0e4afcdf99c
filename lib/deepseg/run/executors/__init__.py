"""Where a stage's pending units run, chosen by ``cluster.executor`` (a registry, as rasterio
keeps its merge methods): ``local`` works through them in this process; ``slurm`` hands them to
Slurm job arrays (``slurm.submit_and_wait``; submitit is imported only then). Every executor
ends with the units' records in the stage's manifest journals; the caller (``driver.run``)
reads the outcome from there."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...config import Experiment
from ..stage import Stage
from .local import run_local

Executor = Callable[[Stage, Experiment, Sequence[str], str, bool], None]


def run_slurm(
    stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool
) -> None:
    """Submit the units as Slurm job arrays and wait for them (see ``slurm``)."""
    from .slurm import submit_and_wait  # submitit is needed only here

    submit_and_wait(stage, exp, units, run_id, force)


EXECUTORS: dict[str, Executor] = {"local": run_local, "slurm": run_slurm}

"""The local executor: every pending unit worked on here, in order, in this process."""

from __future__ import annotations

from collections.abc import Sequence

from ...config import Experiment
from ..stage import Stage
from ..work import work


def run_local(
    stage: Stage, exp: Experiment, units: Sequence[str], run_id: str, force: bool
) -> None:
    """Work on every unit here, in order."""
    work(stage, exp, units, run_id, force)

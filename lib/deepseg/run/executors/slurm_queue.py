"""The Slurm arrays a stage's drivers submitted, and what the queue still holds of them.

Each array a driver submits is recorded in ``logs/slurm/{stage}/arrays.jsonl`` (one JSON line
per array: ``array`` id, ``tasks``, ``driver``, ``time``) as soon as Slurm has accepted it. A
driver that is interrupted or fails cancels its arrays (``scancel``) and waits until the queue
has let their tasks go, so none of them still writes once it has returned. A driver killed
outright (SIGKILL, its node lost) cannot: the next driver of the stage asks ``squeue`` which
recorded arrays still hold tasks (pending, running or completing) and waits for them to end
before it works out what is left, so no unit is handed to a second task while a first one lives.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from ...core.errors import DeepSegError, brief
from ...storage.paths import RunPaths, atomic_path, writer_token
from ..journal import now_iso

log = logging.getLogger(__name__)
SQUEUE_TRIES = 3  # squeue is asked this often (SQUEUE_RETRY_S apart) before the driver gives up
SQUEUE_RETRY_S = 5.0
SCANCEL_BATCH = 500  # job ids per scancel call
CANCEL_WAIT_S = 300.0  # longest wait for cancelled tasks to leave the queue (Slurm's KillWait)


def arrays_file(paths: RunPaths, stage: str) -> Path:
    return paths.logs / "slurm" / stage / "arrays.jsonl"


def record_array(paths: RunPaths, stage: str, array_id: str, n_tasks: int) -> None:
    """Append one submitted array to the stage's record, durably."""
    path = arrays_file(paths, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"array": array_id, "tasks": n_tasks, "driver": writer_token(), "time": now_iso()}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
        out.flush()
        os.fsync(out.fileno())


def recorded_arrays(paths: RunPaths, stage: str) -> list[str]:
    """Ids of the arrays recorded for ``stage``, oldest first (a torn last line is skipped)."""
    path = arrays_file(paths, stage)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [array for array in map(_array_of, lines) if array is not None]


def forget_arrays(paths: RunPaths, stage: str, ended: Collection[str]) -> None:
    """Drop the arrays in ``ended`` (they have left the queue) from the stage's record."""
    path = arrays_file(paths, stage)
    gone = set(ended)
    if not gone or not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if _array_of(line) not in gone]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _array_of(line: str) -> str | None:
    try:
        return str(json.loads(line)["array"])
    except (ValueError, KeyError, TypeError):
        return None


def in_queue(array_ids: Collection[str]) -> dict[str, int]:
    """Array id -> how many of its tasks the queue holds in any state, for those it holds.

    Lists this user's jobs once (``squeue -r``: one line per task, ``%F`` the array's id,
    the job's own id for a plain job) and keeps the wanted ones; asking for the ids
    themselves fails on ids that Slurm has already forgotten."""
    if not array_ids:
        return {}
    wanted, counts = set(array_ids), {}
    for line in _squeue(["-h", "-r", "-o", "%F", f"--user={getpass.getuser()}"]).splitlines():
        array = line.strip()
        if array in wanted:
            counts[array] = counts.get(array, 0) + 1
    return counts


def _squeue(args: list[str]) -> str:
    error = ""
    for attempt in range(SQUEUE_TRIES):
        if attempt:
            time.sleep(SQUEUE_RETRY_S)
        try:
            done = subprocess.run(
                ["squeue", *args], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = brief(exc, named=True)
            continue
        if done.returncode == 0:
            return done.stdout
        error = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
    raise DeepSegError(
        f"squeue failed {SQUEUE_TRIES} times ({error}): cannot tell which tasks of an earlier "
        "run still work; check that Slurm answers (squeue), then rerun"
    )


def cancel(array_ids: Iterable[str]) -> None:
    """``scancel`` the arrays (every task of each); ids Slurm has forgotten are ignored."""
    ids = list(array_ids)
    for start in range(0, len(ids), SCANCEL_BATCH):
        subprocess.run(
            ["scancel", *ids[start : start + SCANCEL_BATCH]],
            capture_output=True,
            timeout=120,
            check=False,
        )


def wait_until_gone(
    stage: str, array_ids: Collection[str], poll_s: float, timeout_s: float | None = None
) -> set[str]:
    """Poll ``squeue`` until none of ``array_ids`` holds a task, logging what is left; returns
    the ids still queued when ``timeout_s`` ran out (empty when all are gone)."""
    start, live = time.monotonic(), in_queue(array_ids)
    while live:
        waited = time.monotonic() - start
        if timeout_s is not None and waited >= timeout_s:
            break
        log.warning(
            "%s: %d task(s) of array(s) %s still in the queue; waiting for them to end "
            "(scancel %s to stop them)",
            stage,
            sum(live.values()),
            ", ".join(sorted(live)),
            " ".join(sorted(live)),
        )
        time.sleep(poll_s if timeout_s is None else min(poll_s, max(timeout_s - waited, 0.1)))
        live = in_queue(array_ids)
    return set(live)

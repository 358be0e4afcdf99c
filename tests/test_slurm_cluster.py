"""The test Slurm (tests/slurm_cluster.py) does what DeepSeg's Slurm executor relies on:
sbatch exit statuses, submitit arrays and their size cap, cancellation seen through sacct,
GPU requests on the fake-GPU node, and requeue of a checkpointable task. Every check reads
states and numbers back from Slurm itself."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from slurm_cluster import SlurmCluster
from slurm_daemons import CLUSTER_NAME

pytestmark = pytest.mark.slurm

# Jobs unpickle these functions in a fresh interpreter that cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_in_array(x: int) -> tuple[int, int, str, str]:
    """x, x², and the Slurm array task and job ids the call ran under."""
    return x, x * x, os.environ["SLURM_ARRAY_TASK_ID"], os.environ["SLURM_ARRAY_JOB_ID"]


def visible_gpus() -> tuple[str | None, str | None]:
    """The GPUs Slurm gave this task, as CUDA and Slurm see them."""
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("SLURM_JOB_GPUS")


class SleepUntilRequeued(submitit.helpers.Checkpointable):
    """Runs forever the first time (after touching ``started``), returns at once after a
    requeue. submitit pickles the object on USR2, so ``runs`` survives the restart."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, started: str) -> tuple[int, int]:
        self.runs += 1
        if self.runs == 1:
            Path(started).touch()
            time.sleep(600)
        return self.runs, int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def test_node_offers_its_cpus_and_fake_gpus(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    node = c.run(["sinfo", "-h", "-N", "-o", "%N|%P|%T|%c|%G"]).stdout.split()
    assert node == [f"{c.node}|{c.partition}*|idle|{c.cpus}|gpu:{c.gpus}"]
    assert (c.cpus, c.gpus) == (max(4, os.cpu_count() or 1), 2)
    clusters = c.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=Cluster"])
    assert clusters.stdout.split() == [CLUSTER_NAME]


@pytest.mark.parametrize("exit_code", [0, 3])
def test_sbatch_wait_returns_the_scripts_exit_status(
    slurm_cluster: SlurmCluster, tmp_path: Path, exit_code: int
) -> None:
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$2"\nexit "$1"\n')
    args = [str(exit_code), str(tmp_path / "args.txt"), "two words", "--flag"]
    sbatch = ["sbatch", "--wait", "--parsable", f"--output={tmp_path / 'log'}", str(script)]
    done = slurm_cluster.run([*sbatch, *args], check=False)
    assert done.returncode == exit_code, done.stderr
    assert (tmp_path / "args.txt").read_text().splitlines() == args
    job_id = done.stdout.strip()
    state = "COMPLETED" if exit_code == 0 else "FAILED"
    assert slurm_cluster.wait_for_accounting(job_id, state) == {job_id: state}
    exit_field = ["sacct", "-X", "-n", "-P", "-o", "ExitCode", "-j", job_id]
    assert slurm_cluster.run(exit_field).stdout.strip() == f"{exit_code}:0"


def test_submitit_array_returns_every_result(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = slurm_cluster.executor(tmp_path / "submitit", timeout_min=5)
    jobs = executor.map_array(square_in_array, range(6))
    for job in jobs:
        slurm_cluster.wait_for_submitit(job)
    results = [job.result() for job in jobs]
    array_id = jobs[0].job_id.split("_")[0]
    assert [r[:3] for r in results] == [(i, i * i, str(i)) for i in range(6)]
    assert {r[3] for r in results} == {array_id}
    expected = {f"{array_id}_{i}": "COMPLETED" for i in range(6)}
    assert slurm_cluster.wait_for_accounting(array_id, "COMPLETED", records=6) == expected


def test_arrays_longer_than_max_array_size_are_rejected(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    held = ["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap=true"]
    longest = slurm_cluster.run([*held, "--array=0-1000"]).stdout.strip()  # 1001 tasks: fits
    slurm_cluster.run(["scancel", longest])
    too_long = slurm_cluster.run([*held, "--array=0-1001"], check=False)
    assert too_long.returncode == 1
    assert "Invalid job array specification" in too_long.stderr
    executor = slurm_cluster.executor(tmp_path / "submitit", timeout_min=5)
    with pytest.raises(FailedJobError, match="Invalid job array specification"):
        executor.map_array(square_in_array, range(1002))


def test_scancel_is_seen_by_submitit_as_cancelled(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.executor(tmp_path / "submitit", timeout_min=5).submit(time.sleep, 600)
    slurm_cluster.wait_for_accounting(job.job_id, "RUNNING")
    cancelled_at = time.monotonic()
    slurm_cluster.run(["scancel", job.job_id])
    slurm_cluster.wait_for_submitit(job, timeout=60)
    with pytest.raises(UncompletedJobError, match=r"has not produced any output \(state: CANC"):
        job.result()
    seen_after_s = time.monotonic() - cancelled_at
    assert job.state.split()[0] == "CANCELLED"
    # submitit's own delays (15 s for a missing result, up to 600 s between sacct calls)
    # would take over 15 s; the fixture lowers them to 2 s.
    assert seen_after_s < 10


GPU_REQUESTS = {  # submitit parameters -> (CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS)
    "none": ({}, (None, None)),
    "gres": ({"slurm_gres": "gpu:1"}, ("0", "0")),
    "gpus_per_node": ({"gpus_per_node": 2}, ("0,1", "0,1")),
}


@pytest.mark.parametrize(
    ("request_parameters", "expected"), GPU_REQUESTS.values(), ids=GPU_REQUESTS.keys()
)
def test_gpu_requests_get_the_fake_gpus(
    slurm_cluster: SlurmCluster, tmp_path: Path, request_parameters: dict, expected: tuple
) -> None:
    executor = slurm_cluster.executor(tmp_path / "submitit", timeout_min=5, **request_parameters)
    job = executor.submit(visible_gpus)
    slurm_cluster.wait_for_submitit(job)
    assert job.result() == expected


def test_more_gpus_than_the_node_has_are_rejected(slurm_cluster: SlurmCluster) -> None:
    asked = ["sbatch", "--gres=gpu:3", "--output=/dev/null", "--wrap=true"]
    rejected = slurm_cluster.run(asked, check=False)
    assert rejected.returncode == 1
    assert "Requested node configuration is not available" in rejected.stderr


def test_checkpointable_task_is_requeued_and_finishes(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    executor = slurm_cluster.executor(tmp_path / "submitit", timeout_min=60)
    job = executor.submit(SleepUntilRequeued(), str(started))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, f"job {job.job_id} never started"
        time.sleep(0.2)
    slurm_cluster.run(
        ["scancel", "--signal=USR2", job.job_id]
    )  # what Slurm sends before preemption
    slurm_cluster.wait_for_submitit(job, timeout=90)
    assert job.result() == (2, 1)  # two runs, one restart
    record = slurm_cluster.run(["scontrol", "-o", "show", "job", job.job_id]).stdout
    assert " Restarts=1 " in record
    assert slurm_cluster.wait_for_accounting(job.job_id, "COMPLETED") == {job.job_id: "COMPLETED"}

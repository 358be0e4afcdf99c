"""cluster.executor: slurm against the real one-node Slurm the tests start (tests/slurm_cluster):
the stages as job arrays, identical to a local run; cancelled, killed and requeued tasks."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, lattice_transform, write_experiment, write_model, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.run.executors.slurm import slurm_parameters
from deepseg.run.executors.slurm_queue import recorded_arrays
from deepseg.run.journal import journal_records
from deepseg.run.manifest import fold
from deepseg.stages.merge import merge
from deepseg.stages.predict import STAGE as PREDICT
from deepseg.stages.predict import predict
from deepseg.stages.tiles import STAGE as TILING
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import RunPaths
from slurm_cluster import cancel_all_jobs

pytestmark = pytest.mark.slurm
GOLDEN = REPO / "tests" / "golden" / "sbatch_predict.txt"
STAGES = ("create_tiles", "predict", "merge", "vectorize")


@pytest.fixture(autouse=True)
def idle_cluster_after(request):
    """Leave no job behind (the next test expects an idle node)."""
    yield
    if "slurm_cluster" in request.fixturenames:
        cancel_all_jobs()
        wait_until(
            lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout,
            timeout=120,
            what="an empty queue",
        )


def scene(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(5).integers(1, 255, size=(3, 200, 200), dtype=np.uint8)
    data[:, :30, :50] = 0
    return write_raster(folder / "scene.tif", data, lattice_transform(640 + 9, 640 + 3))


def experiment(folder: Path, model: Path, **slurm) -> Path:
    """The test run (25 chunks of 2 x 2 tiles) on the local-test profile."""
    cluster = {"profile": "local-test", "slurm": slurm}
    return write_experiment(folder, [scene(folder)], model, cluster=cluster)


def local_run(folder: Path, model: Path) -> Path:
    exp = load_experiment(write_experiment(folder, [scene(folder)], model))
    for stage in (create_tiles, predict, merge):
        stage(exp)
    return folder / "out" / "merged"


@pytest.fixture(scope="module")
def local_merged(tmp_path_factory) -> dict[str, bytes]:
    """The merged rasters of the test run with the local executor (what every Slurm run must
    equal byte for byte), made once for the module."""
    folder = tmp_path_factory.mktemp("local")
    return merged_bytes(local_run(folder / "run", write_model(folder / "model")))


def merged_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


def sacct(job: str, field: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-j", job, "-X", "-n", "-P", "-o", field], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if line]


def test_sbatch_driver_runs_every_stage_as_arrays_like_a_local_run(
    slurm_cluster, tmp_path, model_dir, local_merged
):
    """sbatch --wait DeepSeg.sh EXPERIMENT: arrays split at max_array_size, every unit once,
    a GPU asked for by predict only, merged rasters byte-identical to the local executor, and
    the job script submitit wrote for a predict array equal to the golden file."""
    expected = local_merged
    exp_path = experiment(
        tmp_path / "slurm", model_dir, units_per_task=3, max_array_size=4, gpus_per_node=1,
        extra_sbatch=["--comment=deepseg-golden"], setup=["export DEEPSEG_GOLDEN=1"],
    )  # fmt: skip
    log = tmp_path / "driver.log"
    result = subprocess.run(
        ["sbatch", "--wait", "--cpus-per-task=1", "--mem=1G", f"--output={log}",
         str(REPO / "DeepSeg.sh"), str(exp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-4000:]
    assert merged_bytes(tmp_path / "slurm" / "out" / "merged") == expected
    paths = RunPaths(tmp_path / "slurm" / "out")
    for stage in STAGES:
        states = fold(paths, stage)
        assert {s.status for s in states.values()} == {"done"}, stage
        assert {s.attempts for s in states.values()} == {1}, stage  # each unit exactly once
        # submitit submits a one-task "array" as a plain job
        arrays = {s.slurm_array_job or s.slurm_job for s in states.values()}
        assert None not in arrays, stage
        if stage in ("create_tiles", "predict"):  # 25 chunks / 3 per task = 9 tasks, 4 per array
            assert len(states) == 25 and len(arrays) == 3, stage
            gpus = {a: sacct(a, "AllocTRES") for a in arrays}
            asked = {a: any("gres/gpu=1" in t for t in trs) for a, trs in gpus.items()}
            assert set(asked.values()) == {stage == "predict"}, (stage, gpus)
    assert "=== DeepSeg: vectorize done" in log.read_text()
    check_golden_job_script(tmp_path, tmp_path / "slurm" / "out" / "logs" / "slurm" / "predict")


def check_golden_job_script(run: Path, folder: Path) -> None:
    """The sbatch script submitit wrote for the first 4-task predict array, with the run's
    folder and the driver's Python made neutral, equals the golden file (a change to what is
    submitted shows in review). DEEPSEG_UPDATE_GOLDEN=1 rewrites it after an intended change."""
    scripts = [p.read_text() for p in sorted(folder.rglob("*_submission.sh"))]
    script = next(s for s in scripts if "#SBATCH --array=0-3%4" in s)
    script = script.replace(str(run), "<RUN>")
    script = re.sub(r"\S*python[\d.]*(?= -u -m submitit)", "<PYTHON>", script)
    if os.environ.get("DEEPSEG_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text()
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --comment=deepseg-golden" in script
    # the logs' folder exists before sbatch: a task that starts at once can open its log
    assert "%A_%a/" not in script and "%j/" not in script


class Slow(torch.nn.Module):
    """The pointwise test model after ~1 s of matrix products per call (the tasks must run
    long enough to be cancelled, killed or requeued while they work)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.eye(400) * 0.5
        for _ in range(120):
            m = torch.tanh(m @ m + 0.1)
        logit = (x[:, 0:1] * 1.5 - x[:, 1:2] * 0.5 + x[:, 2:3] * 0.25 + 0.1) * 2.0
        return logit + 0.0 * m.sum()


def running_tasks(folder: Path, stage: str = "predict") -> dict[str, int]:
    """Array task id (e.g. "12_3") -> units it has started, from the journals."""
    started: dict[str, int] = {}
    for journal in (folder / "out" / "logs" / "manifest" / stage).glob("*.jsonl"):
        task = journal.name.split("-")[0]
        started[task] = journal.read_text().count('"status": "running"')
    return started


def wait_until(condition, timeout: float = 240, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def task_python_pid(task: str) -> int:
    """The pid of the submitit python process running array task ``task`` on this node,
    found by its Slurm environment (``scontrol listpids`` needs a cgroup process tracker)."""
    job, _, index = task.partition("_")
    wanted = {f"SLURM_ARRAY_JOB_ID={job}".encode(), f"SLURM_ARRAY_TASK_ID={index}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in cmdline and b"srun" not in cmdline[0] and wanted <= environ:
            return int(proc.name)
    raise AssertionError(f"no submitit process for task {task}")


def test_cancelled_and_killed_tasks_are_reported_and_a_rerun_completes(
    slurm_cluster, tmp_path, model_dir, local_merged
):
    expected = local_merged
    slow = write_model(tmp_path / "slow", Slow())
    folder = tmp_path / "slurm"
    exp = load_experiment(experiment(folder, slow, units_per_task=6))
    create_tiles(exp)
    failure: list[BaseException] = []
    driver = threading.Thread(target=lambda: _catch(failure, predict, exp), daemon=True)
    driver.start()

    def two_at_work() -> list[str] | None:
        tasks = [t for t, n in running_tasks(folder).items() if 1 <= n < 5]
        return tasks[:2] if len(tasks) >= 2 else None

    cancelled, killed = wait_until(two_at_work, what="two predict tasks at work")
    subprocess.run(["scancel", cancelled], check=True)
    os.kill(task_python_pid(killed), 9)
    driver.join(timeout=600)
    assert not driver.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], DeepSegError)
    message = str(failure[0])
    assert re.search(r"predict: 0 unit\(s\) failed \(none\) and \d+ did not finish \(c0", message)
    states = fold(RunPaths.of(exp), "predict")
    units = sorted(fold(RunPaths.of(exp), "create_tiles"))
    unfinished = [u for u in units if u not in states or states[u].status != "done"]
    assert unfinished and f"did not finish ({', '.join(unfinished[:5])}" in message
    # units the two tasks had started are recorded as interrupted, not done and not failed
    assert {states[u].status for u in unfinished if u in states} == {"running"}
    # the same (slow) model: a model replaced in place would redo every chunk
    summary = predict(exp)
    # each interrupted task may have renamed one store into place before being stopped: the
    # rerun then records it as done instead of predicting it again
    written = summary["counts"]["chunks_written"]
    assert len(unfinished) - 2 <= written <= len(unfinished) and summary["done"] == len(units)
    merge(exp)
    assert merged_bytes(folder / "out" / "merged") == expected


def _catch(failure: list[BaseException], stage, exp) -> None:
    try:
        stage(exp)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        failure.append(exc)


def start_driver(exp_path: Path, log: Path) -> subprocess.Popen:
    """predict.py as a user starts it, its log in ``log``."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "predict.py"), "-e", str(exp_path)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=REPO,
    )  # fmt: skip


def queue() -> list[str]:
    return subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True
    ).stdout.split()


def attempts(folder: Path, status: str | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """Unit -> its predict attempts as (worker, first record time, last record time), from the
    journals: an attempt is one worker's records of the unit (start, then done or failed);
    with ``status``, only units with a record of that status."""
    spans: dict[tuple[str, str], list[str]] = {}
    for journal in (folder / "out" / "logs" / "manifest" / "predict").glob("*.jsonl"):
        for record in journal_records(journal):  # a line being written is left out
            if not record.get("recovered") and status in (None, record["status"]):
                spans.setdefault((record["unit"], record["worker"]), []).append(record["time"])
    out: dict[str, list[tuple[str, str, str]]] = {}
    for (unit, worker), times in spans.items():
        out.setdefault(unit, []).append((worker, min(times), max(times)))
    return {unit: sorted(a, key=lambda a: a[1]) for unit, a in out.items()}


def assert_one_worker_at_a_time(folder: Path) -> None:
    """No unit was worked on by two tasks at once: each attempt began after the one before it
    had recorded its last word (its end, or its start when it was killed at work)."""
    for unit, spans in attempts(folder).items():
        for (_, _, before_end), (_, start, _) in itertools.pairwise(spans):
            assert start > before_end, (unit, spans)


def test_a_stopped_driver_cancels_its_arrays_and_the_rerun_is_identical(
    slurm_cluster, tmp_path, model_dir, local_merged
):
    """SIGTERM to the driver (as its own time limit sends): it cancels its arrays, waits until
    none of their tasks is left in the queue, exits 143 with one line; the rerun finishes the
    stage and the merged rasters equal a local run's."""
    expected = local_merged
    folder = tmp_path / "slurm"
    exp_path = experiment(folder, write_model(tmp_path / "slow", Slow()), units_per_task=6)
    exp = load_experiment(exp_path)
    create_tiles(exp)
    log = tmp_path / "driver.log"
    driver = start_driver(exp_path, log)
    wait_until(lambda: 2 <= len(attempts(folder, "done")) < 20, what="predict tasks at work")
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=120) == 143, log.read_text()[-3000:]
    assert queue() == []  # cancelled, and gone before the driver returned
    assert log.read_text().strip().splitlines()[-1] == (
        "deepseg: stopped by SIGTERM; rerun the same command to resume"
    )
    assert "cancelling array(s)" in log.read_text()
    assert recorded_arrays(RunPaths.of(exp), "predict") == []
    summary = predict(exp)
    assert summary["done"] == 25 and summary["counts"]["chunks_written"] < 25
    merge(exp)
    assert merged_bytes(folder / "out" / "merged") == expected
    assert_one_worker_at_a_time(folder)


def test_a_rerun_waits_for_the_tasks_a_killed_driver_left(slurm_cluster, tmp_path, local_merged):
    """SIGKILL to the driver leaves its arrays at work; a rerun submits nothing until every
    task of them has ended (sacct: its arrays were submitted after their last task ended),
    then does what they left undone (one of them was killed), nothing twice."""
    expected = local_merged
    folder = tmp_path / "slurm"
    exp_path = experiment(folder, write_model(tmp_path / "slow", Slow()), units_per_task=6)
    exp = load_experiment(exp_path)
    create_tiles(exp)
    driver = start_driver(exp_path, tmp_path / "driver.log")
    killed = wait_until(
        lambda: next((t for t, n in running_tasks(folder).items() if n >= 2), None),
        what="a predict task at its second unit",
    )
    driver.kill()
    driver.wait(timeout=30)
    os.kill(task_python_pid(killed), 9)  # its units are left for the rerun
    earlier = recorded_arrays(RunPaths.of(exp), "predict")
    assert len(earlier) == 1 and queue()  # recorded; still at work
    summary = predict(exp)
    assert summary["done"] == 25
    merge(exp)
    assert merged_bytes(folder / "out" / "merged") == expected
    states = fold(RunPaths.of(exp), "predict")
    # the rerun's driver (not a Slurm job) records what a killed task renamed but did not record
    rerun = {s.slurm_array_job or s.slurm_job for s in states.values()} - {earlier[0], None}
    assert len(rerun) == 1  # the killed task's units, resubmitted once
    ended = max(sacct(earlier[0], "End"))
    assert all(submitted >= ended for submitted in sacct(rerun.pop(), "Submit"))
    assert_one_worker_at_a_time(folder)


def test_forced_requeue_resumes_at_the_first_unfinished_chunk(slurm_cluster, tmp_path):
    slow = write_model(tmp_path / "slow", Slow())
    folder = tmp_path / "slurm"
    exp = load_experiment(experiment(folder, slow, units_per_task=25))
    create_tiles(exp)
    driver = threading.Thread(target=predict, args=(exp,), daemon=True)
    driver.start()
    task = wait_until(
        lambda: next((t for t, n in running_tasks(folder).items() if n >= 4), None),
        what="the predict task's fourth unit",
    )
    subprocess.run(["scancel", "--signal=USR2", task], check=True)  # as before a time limit
    driver.join(timeout=600)
    assert not driver.is_alive()
    journals = sorted((folder / "out" / "logs" / "manifest" / "predict").glob("*.jsonl"))
    assert len(journals) == 2  # the task before and after its requeue (another process)
    first, second = (journal_records(j) for j in sorted(journals, key=os.path.getmtime))
    units = [r["unit"] for r in first + second if r["status"] == "done"]
    assert sorted(units) == sorted(set(units)) and len(units) == 25  # nothing done twice
    # finished before the requeue: recorded then, or found complete on disk after it (killed
    # between a store's rename and its record)
    finished = [r for r in first if r["status"] == "done"] + [
        r for r in second if r.get("recovered")
    ]
    resumed = next(r for r in second if r["status"] == "running")
    ordered = sorted(fold(RunPaths.of(exp), "predict"))
    assert resumed["unit"] == ordered[len(finished)]  # the first unit not finished before
    assert resumed["slurm_job"] and not resumed["slurm_array_task"]  # submitit: a plain job


def test_parameters_ask_a_gpu_for_predict_only_and_need_no_slurm(tmp_path, model_dir, monkeypatch):
    """What an array asks Slurm for is worked out without any Slurm tool installed."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert shutil.which("sbatch") is None
    exp = load_experiment(
        experiment(
            tmp_path, model_dir, gpus_per_node=1, array_parallelism=8, mem_gb=16,
            extra_sbatch=["--qos=normal", "--exclusive", "#SBATCH --comment x"],
        )
    )  # fmt: skip
    predict_params = slurm_parameters(PREDICT, exp, 40, dependency="afterany:12")
    assert predict_params == {
        "job_name": "deepseg-test-predict",
        "time": 15,
        "cpus_per_task": 1,
        "array_parallelism": 8,
        "setup": [],
        "additional_parameters": {"qos": "normal", "exclusive": True, "comment": "x"},
        "partition": "debug",
        "mem": "16GB",
        "gpus_per_node": 1,
        "dependency": "afterany:12",
    }
    tiles_params = slurm_parameters(TILING, exp, 3)
    assert "gpus_per_node" not in tiles_params and "dependency" not in tiles_params

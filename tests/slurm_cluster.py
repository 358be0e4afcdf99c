"""A real one-node Slurm for the tests, started by the tests themselves (no mocks).

The session fixture ``slurm_cluster`` installs Debian's Slurm 22.05 (slurmctld, slurmd,
slurm-client), munge, MariaDB and slurmdbd with apt-get when they are missing, writes
/etc/slurm/{slurm,slurmdbd,gres}.conf (the default path, so sbatch, sacct and submitit need no
SLURM_CONF), starts munged, mariadbd, slurmdbd, slurmctld and slurmd without systemd, waits
until the node is idle and accounting answers, and yields a ``SlurmCluster``. At session end
it cancels every job and stops each daemon by its pid file. All state (spool, logs, database)
lives under ``SCRATCH``, wiped at the next start; a crashed session's daemons are found there
by their pid files and stopped first. A file lock keeps two sessions from sharing the ports.

Settings follow measurements on a 2-core container without systemd or cgroups: linuxproc
process tracking, no task plugin, short scheduler/credential/kill delays (a requeued job
restarts ~cred_expire + 1 s later; submitit ignores SIGTERM, so a cancelled task dies at
SIGKILL, KillWait later), MaxArraySize=1001 (a common site cap), and 2 fake GPUs (character
devices twinning /dev/null) so that GPU requests are scheduled on a machine without any.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import submitit
from submitit.slurm.slurm import SlurmJob

from slurm_daemons import (
    DAEMONS,
    MARIADBD,
    PACKAGES,
    SCRATCH,
    log_tail,
    start_daemons,
    stop_daemon,
    write_configs,
)

LOCK_FILE = Path("/tmp/deepseg-slurm.lock")  # outside SCRATCH, which is wiped
LOCK_WAIT_S = 600
SUBMITIT_POLL_S = 2  # submitit's sacct back-off (default up to 600 s) and result wait (15 s)


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need from the running cluster: names, paths and polling helpers. The
    daemon logs' tails are attached to the report of any failed test that uses it."""

    partition: str
    node: str
    cpus: int
    gpus: int
    scratch: Path = SCRATCH
    logs: dict[str, Path] = field(default_factory=lambda: {d.name: d.log for d in DAEMONS})

    def run(
        self, args: list[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command; with ``check``, a non-zero exit fails the test."""
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def accounting_states(self, job_id: str) -> dict[str, str]:
        """sacct's state of each record of a job (array tasks separately), e.g.
        ``{"7_0": "COMPLETED", "7_1": "CANCELLED"}``; a state's trailing "by UID" is dropped."""
        out = self.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id]).stdout
        return {
            jid: state.split()[0]
            for jid, state in (line.split("|", 1) for line in out.splitlines() if line)
        }

    def wait_for_accounting(
        self, job_id: str, state: str, records: int = 1, timeout: float = 60
    ) -> dict[str, str]:
        """Poll sacct until ``job_id`` has ``records`` records (an array: one per task), all
        in ``state``; returns them, fails on timeout. Records reach slurmdbd a few seconds
        after the event, and an array shows as one record until its tasks start."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.accounting_states(job_id)
            if len(states) == records and all(s == state for s in states.values()):
                return states
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id}: not {records} record(s) {state} in sacct after {timeout} s: {states}"
        )

    def executor(self, folder: Path, **parameters: object) -> submitit.AutoExecutor:
        """A submitit executor on this cluster's partition that runs this interpreter."""
        executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_python=sys.executable)
        executor.update_parameters(slurm_partition=self.partition, **parameters)
        return executor

    def wait_for_submitit(self, job: submitit.Job, timeout: float = 60) -> None:
        """Wait until submitit sees ``job`` done (``job.result()`` alone can wait forever)."""
        deadline = time.monotonic() + timeout
        while not job.done():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"submitit job {job.job_id} not done after {timeout} s (state {job.state})"
                )
            time.sleep(0.5)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon log, to print when something fails."""
        return "\n".join(f"--- {path} ---\n{log_tail(path, lines)}" for path in self.logs.values())


def cancel_all_jobs(timeout: float = 30) -> None:
    """Cancel every job and wait until the queue is empty (no orphaned slurmstepd)."""
    queue = ["squeue", "-h", "-o", "%A"]
    ids = subprocess.run(queue, capture_output=True, text=True, timeout=30).stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(queue, capture_output=True, text=True, timeout=30).stdout.strip():
            return
        time.sleep(0.5)


def skip_reason() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    if not sys.platform.startswith("linux"):
        return f"a real Slurm needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"starting slurmctld/slurmd/munged needs root (running as uid {os.geteuid()})"
    missing = missing_packages()
    if missing and shutil.which("apt-get") is None:
        return f"packages {' '.join(missing)} are missing and there is no apt-get"
    return None


def missing_packages() -> list[str]:
    """The Debian packages of PACKAGES that are not installed."""
    query = ["dpkg-query", "-W", "-f=${Status}\n", *PACKAGES]
    done = subprocess.run(query, capture_output=True, text=True)
    installed = done.stdout.splitlines()
    if shutil.which("dpkg-query") is None or len(installed) != len(PACKAGES):
        return list(PACKAGES)
    return [p for p, s in zip(PACKAGES, installed, strict=True) if s != "install ok installed"]


def install_packages() -> None:
    """apt-get install what is missing (once per machine; ~40 s), with `apt-get update` and
    one retry if the package lists are stale. A policy-rc.d keeps the packages' scripts from
    starting system daemons of their own."""
    missing = missing_packages()
    if not missing:
        return
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "--no-install-recommends", *missing]
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run([*apt, "update"], env=env, capture_output=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
    finally:
        if own_policy:
            policy.unlink()
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        pytest.skip(f"apt-get install {' '.join(missing)} failed: {tail}")


@contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide lock, waiting for another test session that holds it (the
    kernel drops it when a session dies, so a crash leaves no stale lock)."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test session held {LOCK_FILE} for {LOCK_WAIT_S} s")
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def stop_leftovers() -> None:
    """Stop daemons a killed session left behind (found by their pid files under SCRATCH),
    cancelling its jobs first when its slurmctld still answers, then wipe SCRATCH."""
    if any(d.running_pid() for d in DAEMONS) and Path("/etc/slurm/slurm.conf").exists():
        cancel_all_jobs(timeout=15)
    for daemon in reversed(DAEMONS):
        stop_daemon(daemon)
    shutil.rmtree(SCRATCH, ignore_errors=True)


def bring_up(gpus: int = 2) -> SlurmCluster:
    """Write the configs, start the daemons and wait until the node takes jobs."""
    node = socket.gethostname().split(".")[0]
    cpus = max(4, os.cpu_count() or 1)
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    cluster = SlurmCluster("debug", node, cpus, gpus)
    try:
        write_configs(node, cpus, int(memory_mb * 0.9), gpus, cluster.partition)
    except OSError as error:
        pytest.skip(f"cannot write the Slurm configs or fake GPU devices: {error}")
    failure = start_daemons(node)
    if failure is not None:
        tear_down(None)
        pytest.skip(failure)
    return cluster


def tear_down(cluster: SlurmCluster | None) -> None:
    """Cancel jobs, stop every daemon (slurmd first, munged last), remove the configs and
    the database; the logs stay in SCRATCH until the next session."""
    if cluster is not None:
        cancel_all_jobs()
    for daemon in reversed(DAEMONS):
        stop_daemon(daemon)
    for name in ("slurm.conf", "slurmdbd.conf", "gres.conf"):
        Path("/etc/slurm", name).unlink(missing_ok=True)
    shutil.rmtree(MARIADBD.folder / "data", ignore_errors=True)


@contextmanager
def faster_submitit_polling() -> Iterator[None]:
    """Lower submitit's private poll delays (hence submitit pinned to 1.5.x) while inside."""
    if not hasattr(SlurmJob.watcher, "_delay_s") or not hasattr(SlurmJob, "_results_timeout_s"):
        raise AssertionError(f"submitit {submitit.__version__} renamed its private poll delays")
    old = SlurmJob.watcher._delay_s, SlurmJob._results_timeout_s
    SlurmJob.watcher._delay_s = SlurmJob._results_timeout_s = SUBMITIT_POLL_S
    try:
        yield
    finally:
        SlurmJob.watcher._delay_s, SlurmJob._results_timeout_s = old


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm with accounting and 2 fake GPUs (see the module docstring)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with machine_lock():
        stop_leftovers()
        install_packages()
        started = time.monotonic()
        cluster = bring_up()
        print(f"slurm_cluster: up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        try:
            with faster_submitit_polling():
                yield cluster
        finally:
            started = time.monotonic()
            tear_down(cluster)
            print(f"slurm_cluster: down in {time.monotonic() - started:.1f} s", file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the daemon logs' tails to the report of a failed test that used the cluster."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("slurm_cluster")
    if report.failed and isinstance(cluster, SlurmCluster):
        report.sections.append(("Slurm daemon logs", cluster.log_tails(30)))

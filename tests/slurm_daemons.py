"""The daemons of the test Slurm (see slurm_cluster.py): their configs, start and stop.

Every daemon keeps its pid file, log and state in its own folder under SCRATCH, so a later
session can find and stop what a killed one left running. munged and mariadbd use sockets in
their folders (not the system ones in /run), so a system munge or MariaDB is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCRATCH = Path("/tmp/deepseg-slurm")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "mariadb-server", "slurmdbd")
CLUSTER_NAME = "deepseg"
START_TIMEOUT_S = 30


@dataclass(frozen=True)
class Daemon:
    """One daemon: ``name`` is both its executable and its process name (/proc/PID/comm)."""

    name: str
    user: str = "root"

    @property
    def folder(self) -> Path:
        return SCRATCH / self.name

    @property
    def pid_file(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this daemon, else None."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, ValueError, IndexError):
            return None
        return pid if comm == self.name and not zombie else None


MUNGED = Daemon("munged", user="munge")
MARIADBD = Daemon("mariadbd", user="mysql")
SLURMDBD = Daemon("slurmdbd")
SLURMCTLD = Daemon("slurmctld")
SLURMD = Daemon("slurmd")
DAEMONS = (MUNGED, MARIADBD, SLURMDBD, SLURMCTLD, SLURMD)  # in start order
MUNGE_SOCKET = MUNGED.folder / "munge.socket"
MYSQL_SOCKET = MARIADBD.folder / "mysqld.sock"
FAKE_GPU_FILES = SCRATCH / "fakegpu" / "nvidia"
# A throwaway database: no fsync, a small buffer pool and log (memory stays small; measured
# no faster: the first start is install-db ~3-5 s plus slurmdbd building its schema ~4 s).
FAST_UNSAFE_INNODB = [
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=nosync",
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=32M",
]


class DaemonFailed(Exception):
    """A daemon did not come up; the message is one line with the tail of its log."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_configs(node: str, cpus: int, memory_mb: int, gpus: int, partition: str) -> None:
    """Create the daemons' folders and placeholder GPU files, and write /etc/slurm/*.conf."""
    for daemon in DAEMONS:
        daemon.folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(daemon.folder, daemon.user, daemon.user)
        daemon.folder.chmod(
            0o711 if daemon is MUNGED else 0o755
        )  # clients need x on the socket dir
    FAKE_GPU_FILES.parent.mkdir(exist_ok=True)
    for index in range(gpus):  # slurmd ignores a gres File= that is not a device: /dev/null twins
        os.mknod(f"{FAKE_GPU_FILES}{index}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    etc = Path("/etc/slurm")
    etc.mkdir(exist_ok=True)
    (etc / "slurm.conf").write_text(slurm_conf(node, cpus, memory_mb, gpus, partition))
    (etc / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={node} Name=gpu File={FAKE_GPU_FILES}[0-{gpus - 1}]\n"
    )
    dbd_conf = etc / "slurmdbd.conf"
    dbd_conf.touch(mode=0o600)
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read (it may hold a password)
    dbd_conf.write_text(
        f"AuthType=auth/munge\nAuthInfo=socket={MUNGE_SOCKET}\nDbdHost=localhost\n"
        f"DbdAddr=127.0.0.1\nSlurmUser=root\nPidFile={SLURMDBD.pid_file}\n"
        f"LogFile={SLURMDBD.log}\nStorageType=accounting_storage/mysql\n"
        f"StorageHost=localhost\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
    )


def slurm_conf(node: str, cpus: int, memory_mb: int, gpus: int, partition: str) -> str:
    """slurm.conf for one node at 127.0.0.1. config_overrides lets the node offer ``cpus``
    even on a 2-core machine, so a few tiny test jobs run side by side. Connections to
    slurmdbd take their munge socket from AccountingStoragePass, not from AuthInfo."""
    return f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={MUNGE_SOCKET},cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
KillWait=5
MaxArraySize=1001
StateSaveLocation={SLURMCTLD.folder}
SlurmctldPidFile={SLURMCTLD.pid_file}
SlurmctldLogFile={SLURMCTLD.log}
SlurmdSpoolDir={SLURMD.folder}
SlurmdPidFile={SLURMD.pid_file}
SlurmdLogFile={SLURMD.log}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass={MUNGE_SOCKET}
AccountingStorageTRES=gres/gpu
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus}
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def output(args: list[str], env: dict[str, str] | None = None) -> str | None:
    """A command's stdout, or None if it fails or takes over 15 s."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=15, env=env)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


def wait_until(ready: Callable[[], bool], daemon: Daemon, what: str) -> None:
    """Poll ``ready`` until it holds; fail at once if the daemon died, or after a timeout."""
    start = time.monotonic()
    while not ready():
        elapsed = time.monotonic() - start
        if elapsed > START_TIMEOUT_S:
            raise DaemonFailed(f"{daemon.name}: not {what} after {START_TIMEOUT_S} s")
        if elapsed > 3 and daemon.running_pid() is None:
            raise DaemonFailed(f"{daemon.name} exited before it was {what}")
        time.sleep(0.2)


def launch(daemon: Daemon, args: list[str], env: dict[str, str] | None = None) -> None:
    """Run a daemon that forks into the background itself; fail if the command fails."""
    daemon.log.touch()
    shutil.chown(daemon.log, daemon.user, daemon.user)  # munged refuses a log it does not own
    with open(daemon.log, "a") as log:
        done = subprocess.run(
            args,
            user=daemon.user,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    if done.returncode != 0:
        raise DaemonFailed(f"{' '.join(args)} exited {done.returncode}")


def start_munged() -> None:
    """munged as user munge, with a fresh key and its socket in its own folder."""
    key = MUNGED.folder / "munge.key"
    key.write_bytes(os.urandom(128))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    files = {
        "key-file": key,
        "socket": MUNGE_SOCKET,
        "log-file": MUNGED.log,
        "pid-file": MUNGED.pid_file,
        "seed-file": MUNGED.folder / "munged.seed",
    }
    launch(MUNGED, ["munged", *(f"--{option}={path}" for option, path in files.items())])
    wait_until(lambda: output(["munge", "-n", "-S", str(MUNGE_SOCKET)]) is not None, MUNGED, "up")


def start_mariadbd() -> None:
    """A fresh database in SCRATCH; root logs in through the socket as the OS user root.
    mariadbd does not fork by itself: `setsid --fork` detaches it like the other daemons."""
    options = ["--no-defaults", "--user=mysql", f"--datadir={MARIADBD.folder / 'data'}"]
    options += FAST_UNSAFE_INNODB
    install = ["mariadb-install-db", *options, "--auth-root-authentication-method=socket"]
    with open(MARIADBD.log, "a") as log:
        subprocess.run(
            [*install, "--skip-test-db"], stdout=log, stderr=subprocess.STDOUT, check=True
        )
    files = [f"--socket={MYSQL_SOCKET}", f"--pid-file={MARIADBD.pid_file}"]
    server = ["mariadbd", *options, *files, f"--log-error={MARIADBD.log}", "--skip-networking"]
    launch(MARIADBD, ["setsid", "--fork", *server])
    ping = ["mariadb-admin", "--no-defaults", f"--socket={MYSQL_SOCKET}", "-uroot", "ping"]
    wait_until(lambda: output(ping) is not None, MARIADBD, "up")


def start_slurmdbd() -> None:
    """slurmdbd reaches MariaDB through MYSQL_UNIX_PORT; registering the cluster proves it
    (the first start builds the schema: a few seconds)."""
    launch(SLURMDBD, ["slurmdbd"], env={**os.environ, "MYSQL_UNIX_PORT": str(MYSQL_SOCKET)})
    add = ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME]
    wait_until(lambda: output(add) is not None, SLURMDBD, "storing accounts")


def start_slurmctld() -> None:
    launch(SLURMCTLD, ["slurmctld"])
    wait_until(lambda: "is UP" in (output(["scontrol", "ping"]) or ""), SLURMCTLD, "up")


def start_slurmd(node: str) -> None:
    """Start slurmd, then wait until the node is idle and slurmctld is known to slurmdbd."""
    launch(SLURMD, ["slurmd", "-N", node])
    state = ["sinfo", "-h", "-n", node, "-o", "%T"]
    wait_until(lambda: output(state) == "idle\n", SLURMD, "idle")
    hosts = ["sacctmgr", "-n", "-P", "show", "cluster", CLUSTER_NAME, "format=ControlHost"]
    wait_until(lambda: bool((output(hosts) or "").strip()), SLURMCTLD, "known to slurmdbd")


def start_daemons(node: str) -> str | None:
    """Start every daemon in order; None when all run, else why not (one line, log tail)."""
    starters = [start_munged, start_mariadbd, start_slurmdbd, start_slurmctld]
    for daemon, start in zip(DAEMONS, [*starters, lambda: start_slurmd(node)], strict=True):
        try:
            start()
        except (DaemonFailed, OSError, subprocess.SubprocessError) as error:
            tail = " | ".join(log_tail(daemon.log, 5).splitlines())
            return f"{daemon.name} did not start ({error}); {daemon.log}: {tail}"
    return None


def stop_daemon(daemon: Daemon, timeout: float = 15) -> None:
    """SIGTERM the daemon by its pid file, SIGKILL it after ``timeout`` s; remove the file."""
    pid = daemon.running_pid()
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if pid is None:
            break
        os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if daemon.running_pid() != pid:
                pid = None
                break
            time.sleep(0.1)
    daemon.pid_file.unlink(missing_ok=True)

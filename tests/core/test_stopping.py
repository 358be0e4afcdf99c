"""A pool's processes end with the process that started them, even when it is SIGKILLed in
the middle of their work (a pool's own processes would finish the task they hold first)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import multiprocessing, os, sys, time
sys.path.insert(0, {lib!r})
from deepseg.core.stopping import exit_with_parent

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, exit_with_parent, (os.getpid(), 0.1)) as pool:
        pool.map(time.sleep, [0.3, 0.3], chunksize=1)  # both started, their watchers too
        pool.map_async(time.sleep, [600, 600], chunksize=1)  # both busy, as with a unit
        print(*(p.pid for p in multiprocessing.active_children()), flush=True)
        time.sleep(600)
"""


def test_pool_processes_exit_once_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(lib=str(Path(__file__).resolve().parents[2] / "lib")))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2 and all(Path(f"/proc/{c}").exists() for c in children)
        time.sleep(0.5)
        assert all(Path(f"/proc/{c}").exists() for c in children)  # alive while it is
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone_by = time.monotonic() + 5
        while [c for c in children if Path(f"/proc/{c}").exists()]:
            assert time.monotonic() < gone_by, f"{children} outlived their parent"
            time.sleep(0.05)
    finally:
        parent.kill()

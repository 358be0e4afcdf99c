"""Temporary files of killed writers are removed by the next worker on their host; those of
live writers and of other hosts are not."""

from __future__ import annotations

import socket
import subprocess
import sys

from deepseg.storage.partials import sweep_dead_partials
from deepseg.storage.paths import partial_path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_this_hosts_dead_writers_leftovers_are_removed(tmp_path):
    host, dead = socket.gethostname(), dead_pid()
    live = partial_path(tmp_path / "c00001_r00001.kea")  # this process: alive
    live.touch()
    names = {
        "dead_file": f".c00002_r00002.{host}-{dead}-0123abcd.partial.kea",
        "dead_folder": f".c00003_r00003.{host}-{dead}-89abcdef.partial.d",
        "other_host": f".c00004_r00004.not-{host}-x-{dead}-0123abcd.partial.kea",
        "finished": "c00005_r00005.kea",
    }
    for key, name in names.items():
        (tmp_path / name).mkdir() if key == "dead_folder" else (tmp_path / name).touch()
    (tmp_path / names["dead_folder"] / "inside.tif").touch()

    assert sweep_dead_partials([tmp_path, tmp_path / "absent"]) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, names["other_host"], names["finished"]])
    assert sweep_dead_partials([tmp_path]) == 0

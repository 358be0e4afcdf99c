"""Temporary files that killed writers left behind, removed once their writer is gone.

A writer's temporary name holds ``HOST-PID-RANDOM`` (``paths.partial_path``). A worker starting
on a host removes, in the folders it is about to write, the ones of that host whose process no
longer runs: a killed task's leftovers do not pile up over reruns, and a live writer's (another
task on the same node) are left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from .paths import PARTIAL_MARK, PARTIAL_PREFIX

log = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_dead_partials(folders: Iterable[Path]) -> int:
    """Remove this host's temporary files and folders in ``folders`` whose writer process has
    ended; returns how many."""
    host = re.escape(socket.gethostname())
    mark = re.compile(rf"\.{host}-(\d+)-[0-9a-f]+{re.escape(PARTIAL_MARK)}")
    removed = 0
    for folder in folders:
        try:
            names = [n for n in os.listdir(folder) if n.startswith(PARTIAL_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            found = mark.search(name)
            if found is None or process_alive(int(found[1])):
                continue
            path = Path(folder) / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) that killed writers left", removed)
    return removed

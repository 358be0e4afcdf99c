"""Temporary files and folders: a folder written whole (``atomic_folder``), and the temporary
files that killed writers left behind, removed once their writer is gone.

A writer's temporary name holds ``HOST-PID-RANDOM`` (``paths.partial_path``). A worker starting
on a host removes, in the folders it is about to write, the ones of that host whose process no
longer runs: a killed task's leftovers do not pile up over reruns, and a live writer's (another
task on the same node) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from .paths import PARTIAL_MARK, PARTIAL_PREFIX, partial_path, writer_token

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


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill (``partial_path``); on success it takes the place of
    ``path``, on error it is deleted. An existing ``path`` is moved aside (``.NAME.*.old``) and
    deleted only once the new folder is in place, so a crash never leaves a half-filled one.
    """
    tmp = partial_path(path)
    old = path.with_name(f"{PARTIAL_PREFIX}{path.name}.{writer_token()}.old")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

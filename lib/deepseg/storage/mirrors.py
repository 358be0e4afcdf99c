"""The bucket mirrors of this process: one per gs:// run folder, shared by every ``RunPaths``
of that run, so a finished file is uploaded once (``paths.atomic_path`` hands it over)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .remote import GsUri

if TYPE_CHECKING:
    from .mirror import Mirror

log = logging.getLogger(__name__)
_mirrors: dict[Path, Mirror] = {}
_mirrors_lock = threading.Lock()


def attach_mirror(root: Path, remote: GsUri) -> Mirror:
    """The mirror of ``root`` to ``remote`` (one per pair in this process, reused)."""
    from .mirror import Mirror  # the Google Cloud client loads only for gs:// runs

    with _mirrors_lock:
        current = _mirrors.get(root)
        if current is None or current.remote != remote:
            current = _mirrors[root] = Mirror(root, remote)
            log.info("outputs go to %s (written first to %s)", remote, root)
        return current


def covering_mirror(path: Path) -> Mirror | None:
    """The mirror whose root holds ``path``, if any (None in a local run)."""
    for root, found in list(_mirrors.items()):
        if path.is_relative_to(root):
            return found
    return None

"""``deepseg sync -e NAME [--dry-run]``: a run's scratch folder pushed to its bucket.

Uploads every finished file of the scratch folder that the bucket lacks or holds differently
(logs excepted: those the stages merge, so a differing log is reported, not overwritten).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DeepSegError
from ..core.progress import progress
from .checksums import file_checksums
from .paths import RunPaths
from .remote import SYNC_FOLDERS, UPLOAD_WORKERS, RemoteObject

if TYPE_CHECKING:
    from ..config import Experiment

log = logging.getLogger(__name__)


def _finished_here(root: Path) -> list[Path]:
    """Every finished file of the run folder (no partial files, no hidden cache)."""
    files = (p for p in root.rglob("*") if p.is_file())
    return sorted(p for p in files if not any(s.startswith(".") for s in p.relative_to(root).parts))


def sync_plan(paths: RunPaths) -> list[tuple[Path, str, RemoteObject | None]]:
    """(file, why, the bucket's object) for each file to upload: missing, corrupt or differing."""
    from . import gcs

    remote = gcs.list_objects(paths.remote)
    plan = []
    for path in _finished_here(paths.root):
        key = path.relative_to(paths.root).as_posix()
        obj = remote.get(key)
        if obj is None:
            plan.append((path, "missing in the bucket", None))
        elif not obj.intact:
            plan.append((path, "corrupt in the bucket", obj))
        elif obj.size != path.stat().st_size or obj.crc32c != file_checksums(path).crc32c:
            if key.partition("/")[0] in SYNC_FOLDERS:
                log.info("sync: %s differs; kept the bucket's (stages merge logs)", key)
            else:
                plan.append((path, "differs from the bucket", obj))
    return plan


def sync(exp: Experiment, dry_run: bool = False, **_: object) -> dict[str, int]:
    """Upload what the bucket lacks or holds differently; with ``dry_run`` only list it."""
    paths = RunPaths.of(exp)
    if paths.remote is None:
        raise DeepSegError(f"output.path is the local folder {paths.root}: nothing to sync")
    plan = sync_plan(paths)
    total = sum(p.stat().st_size for p, _, _ in plan)
    verb = "would upload" if dry_run else "upload"
    for path, why, _ in plan:
        print(f"{verb} {paths.show(path)} ({why}, {path.stat().st_size / 1e6:.2f} MB)")
    print(f"sync: {verb} {len(plan)} file(s), {total / 1e6:.2f} MB, from {paths.root}")
    if not dry_run and plan:

        def send(item: tuple[Path, str, RemoteObject | None]) -> RemoteObject:
            path, _, obj = item
            uri = paths.remote / path.relative_to(paths.root).as_posix()
            from . import gcs

            return gcs.upload(path, uri, obj.generation if obj else 0)

        with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            for _ in progress(pool.map(send, plan), len(plan), "sync: files", log):
                pass
    return {"files": len(plan), "bytes": total}

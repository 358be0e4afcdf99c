"""A run's local folder mirrored to a ``gs://`` prefix: how a gs:// ``output.path`` works.

Stages write under the local scratch folder exactly as in a local run; ``paths.atomic_path``
hands every finished file to the folder's ``Mirror``, which publishes it to the same relative
key under the prefix. Unit outputs (tiles, predictions, merged, vectors) are queued and uploaded
by ``UPLOAD_WORKERS`` threads while the stage goes on; ``flush`` waits for them (stages do, before
their run-log entry says done). Files under ``logs/`` are uploaded at once and raise
``remote.Conflict`` when another worker changed them since we read them, so the run log is merged,
never overwritten (see ``runlog``).

What "finished" means comes from the bucket, so a rerun on another machine resumes from it:
a unit is done when its object exists and is intact (its CRC32C equals the one recorded at
upload), or when its file is finished in the scratch folder (then it is uploaded now). Each
upload names the generation it expects to replace (0: none), so when two workers finish the same
unit the first object stays and the second worker logs that it kept it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path

from ..core.errors import DeepSegError
from ..core.progress import progress
from . import gcs
from .checksums import file_checksums
from .remote import SYNC_FOLDERS, UPLOAD_WORKERS, Conflict, GsUri, RemoteObject

log = logging.getLogger(__name__)


class Mirror:
    """The local folder ``root`` published to ``remote`` (both hold the run's layout)."""

    def __init__(self, root: Path, remote: GsUri) -> None:
        self.root, self.remote = root, remote
        self._seen: dict[str, RemoteObject] = {}  # key -> the object as last seen in the bucket
        self._listed: set[str] = set()  # top-level folders whose listing is in _seen
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="deepseg-upload")
        self._pending: dict[Future, str] = {}
        self._uploaded = 0  # finished uploads since the last flush

    def forget(self) -> None:
        """Drop what was seen in the bucket: the next question lists it again."""
        with self._lock:
            self._seen.clear()
            self._listed.clear()

    def key(self, path: Path) -> str:
        """The object key (relative to ``remote``) of a local file under ``root``."""
        return path.relative_to(self.root).as_posix()

    def seen(self, key: str) -> RemoteObject | None:
        """The bucket's object for ``key`` (one listing per top-level folder, then cached)."""
        self._list(key.partition("/")[0] if "/" in key else "")
        return self._seen.get(key)

    def _list(self, folder: str) -> None:
        if folder in self._listed:
            return
        found = gcs.list_objects(self.remote / folder if folder else self.remote)
        prefix = f"{folder}/" if folder else ""
        with self._lock:
            self._seen.update({prefix + k: obj for k, obj in found.items()})
            self._listed.add(folder)

    def finished(self, path: Path) -> bool:
        """Whether ``path`` is done: intact in the bucket, or finished here (then uploaded)."""
        obj = self.seen(self.key(path))
        if obj is not None and obj.intact:
            return True
        if path.exists():
            self.publish(path)
            return True
        return False

    def names(self, folder: Path, suffix: str) -> set[str]:
        """Names of the finished files directly in ``folder``: here or intact in the bucket."""
        here = {p.name for p in folder.glob(f"*{suffix}") if not p.name.startswith(".")}
        prefix = self.key(folder) + "/"
        self._list(prefix.partition("/")[0])
        with self._lock:
            there = {
                k[len(prefix) :]
                for k, obj in self._seen.items()
                if k.startswith(prefix) and "/" not in k[len(prefix) :] and obj.intact
            }
        return here | {n for n in there if n.endswith(suffix) and not n.startswith(".")}

    def fetch(self, path: Path) -> Path:
        """``path``, downloaded (verified) when the bucket holds a version this folder lacks."""
        key = self.key(path)
        obj = self.seen(key)
        if obj is None or not obj.intact or key in self._pending.values():
            return path  # only here (or nowhere): the local file is the truth
        if path.exists() and file_checksums(path).crc32c == obj.crc32c:
            return path
        log.debug("download %s -> %s", obj.uri, path)
        gcs.download(obj, path)
        return path

    def publish(self, path: Path) -> None:
        """Upload a finished file: now for SYNC_FOLDERS (Conflict on a race), else queued."""
        key = self.key(path)
        if key.partition("/")[0] in SYNC_FOLDERS:
            self._upload(path, key)
            return
        if key in self._pending.values():
            return  # already queued (a file written in a thread, then handed over again)
        while len(self._pending) >= 4 * UPLOAD_WORKERS:  # the stage waits for the uploads
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            self._collect(done, raise_errors=True)
        self._pending[self._pool.submit(self._upload_unit, path, key)] = key

    def flush(self, raise_errors: bool = True) -> int:
        """Wait for every queued upload; raise the first failure (or log them). Returns how
        many files were uploaded since the last flush."""
        pending = list(self._pending)
        waiting = [f for f in pending if not f.done()]
        if waiting:
            log.info("waiting for %d upload(s) to %s", len(waiting), self.remote)
            for _ in progress(as_completed(waiting), len(waiting), "upload: files", log, 30):
                pass
        self._collect(pending, raise_errors)
        uploaded, self._uploaded = self._uploaded, 0
        if uploaded:
            log.info("%d file(s) uploaded to %s, checksums verified", uploaded, self.remote)
        return uploaded

    def _collect(self, done: set[Future] | list[Future], raise_errors: bool) -> None:
        for future in done:
            key = self._pending.pop(future)
            error = future.exception()
            if error is None:
                self._uploaded += 1
            elif raise_errors:
                raise error
            else:
                log.error("upload of %s failed: %s", key, error)

    def _upload(self, path: Path, key: str) -> RemoteObject:
        seen = self.seen(key)
        if seen is not None and seen.intact and seen.crc32c == file_checksums(path).crc32c:
            return seen  # the bucket holds these bytes already
        try:
            obj = gcs.upload(path, self.remote / key, seen.generation if seen else 0)
        except Conflict as exc:
            with self._lock:
                if exc.current is None:
                    self._seen.pop(key, None)
                else:
                    self._seen[key] = exc.current
            raise
        with self._lock:
            self._seen[key] = obj
        return obj

    def _upload_unit(self, path: Path, key: str) -> RemoteObject:
        """Upload a unit's output; when another worker finished it first, keep theirs."""
        for _ in range(gcs.ATTEMPTS):
            try:
                return self._upload(path, key)
            except Conflict as exc:
                other = exc.current
                if other is None or not other.intact:
                    continue  # deleted or corrupt meanwhile: try again against what is there
                if other.crc32c != file_checksums(path).crc32c:
                    log.warning("%s: another worker finished it first; kept its object", other.uri)
                return other
        raise DeepSegError(f"{self.remote / key}: kept changing while uploading; rerun the stage")

"""Google Cloud Storage: the client and its credentials, verified transfers.

Credentials, as Google's client libraries find them: ``STORAGE_EMULATOR_HOST`` (an emulator,
anonymous), else ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account key file), else the VM's
default service account. GDAL reads the same variables when it opens ``/vsigs/`` paths
(``gdal_environment`` points it at an emulator).

Every transfer is checked against the bytes on disk. An upload sends the file's CRC32C (real GCS
refuses a body that does not match) and records it in the object's metadata (``deepseg-crc32c``);
the stored object's CRC32C and MD5 must then equal the file's, or that generation is deleted and
the upload redone. A download must hash to the object's CRC32C before it is renamed into place.
Uploads carry a generation precondition (``if_generation_match``: 0 = only if absent, G = only if
the object is still generation G), so two workers never overwrite each other's objects: the loser
gets ``Conflict``. Errors become one-line ``DeepSegError``s naming the bucket, the object and the
permission that is missing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import DeepSegError, brief

try:  # imported only when a gs:// path is used (see ``remote``)
    from google.api_core import exceptions as api_errors
    from google.auth import exceptions as auth_errors
    from google.cloud import storage
    from google.cloud.storage.exceptions import DataCorruption
    from requests import exceptions as http_errors
except ImportError as exc:
    raise DeepSegError(
        f"gs:// paths need the Google Cloud client ({brief(exc)}): pip install google-cloud-storage"
    ) from exc
from .checksums import file_checksums
from .remote import CRC_METADATA, Conflict, GsUri, RemoteObject

log = logging.getLogger(__name__)

ATTEMPTS = 3  # tries for a transfer whose bytes arrive corrupted
PERMISSION = {  # the IAM permission each kind of request needs
    "list": "storage.objects.list",
    "read": "storage.objects.get",
    "upload": "storage.objects.create (and storage.objects.delete to replace)",
    "delete": "storage.objects.delete",
}


# ---- client, credentials, errors ------------------------------------------------------------
_clients: dict[str | None, storage.Client] = {}
_clients_lock = threading.Lock()


def client() -> storage.Client:
    """One shared client per emulator setting (thread-safe for the requests made here)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    with _clients_lock:
        if emulator not in _clients:
            try:
                _clients[emulator] = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
            except auth_errors.DefaultCredentialsError as exc:
                raise DeepSegError(
                    f"no Google Cloud credentials for gs:// paths ({brief(exc)}); set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a "
                    "VM whose service account may use the bucket"
                ) from exc
        return _clients[emulator]


def _identity() -> str:
    email = getattr(client()._credentials, "service_account_email", None)
    return f"the account {email}" if isinstance(email, str) and "@" in email else "your account"


@contextlib.contextmanager
def explained(action: str, uri: GsUri) -> Iterator[None]:
    """Turn a failed request about ``uri`` into a one-line DeepSegError (``action``: PERMISSION)."""
    where = f"{uri} (bucket {uri.bucket}, object {uri.key or '/'})"
    try:
        yield
    except (api_errors.Forbidden, api_errors.Unauthorized) as exc:
        raise DeepSegError(
            f"{where}: permission denied to {action}: {_identity()} lacks {PERMISSION[action]} "
            f"on bucket {uri.bucket} (HTTP {exc.code}: {brief(exc)})"
        ) from exc
    except api_errors.NotFound as exc:
        missing = f"bucket {uri.bucket}" if action in ("list", "upload") else "the object"
        raise DeepSegError(f"{where}: {missing} does not exist (HTTP 404); check the path") from exc
    except (auth_errors.GoogleAuthError, auth_errors.TransportError) as exc:
        raise DeepSegError(f"{where}: credentials refused: {brief(exc)}") from exc
    except (api_errors.GoogleAPIError, http_errors.RequestException) as exc:
        raise DeepSegError(f"{where}: cannot {action}: {brief(exc)}") from exc


def gdal_environment() -> None:
    """Let GDAL's /vsigs/ reach an emulator too (real GCS needs nothing: GDAL reads
    GOOGLE_APPLICATION_CREDENTIALS or the VM's credentials itself). Values already set win."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        os.environ.setdefault("CPL_GS_ENDPOINT", emulator.rstrip("/") + "/")
        os.environ.setdefault("GS_NO_SIGN_REQUEST", "YES")


# ---- reading --------------------------------------------------------------------------------
def _describe(uri: GsUri, blob: storage.Blob) -> RemoteObject:
    uploaded = (blob.metadata or {}).get(CRC_METADATA)
    return RemoteObject(
        uri, int(blob.generation), int(blob.size), blob.crc32c, blob.md5_hash, uploaded
    )


def list_objects(prefix: GsUri) -> dict[str, RemoteObject]:
    """Every object under the folder-like ``prefix``, by key relative to it ("a/b.kea")."""
    start = f"{prefix.key}/" if prefix.key else ""
    with explained("list", prefix):
        blobs = list(client().list_blobs(prefix.bucket, prefix=start))
    return {
        b.name[len(start) :]: _describe(GsUri(prefix.bucket, b.name), b)
        for b in blobs
        if not b.name.endswith("/")
    }


def stat(uri: GsUri) -> RemoteObject | None:
    """The object at ``uri``, or None when there is none."""
    with explained("read", uri):
        blob = client().bucket(uri.bucket).get_blob(uri.key)
    return None if blob is None else _describe(uri, blob)


def expand(pattern: GsUri) -> list[GsUri]:
    """The objects a glob names, sorted, as a local glob would: ``*``, ``?`` and ``[...]``
    match within one folder level, ``**`` any number of levels; a plain URI names itself
    ([] when absent)."""
    if not any(c in pattern.key for c in "*?["):
        return [pattern] if stat(pattern) is not None else []
    parts = pattern.key.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    base = GsUri(pattern.bucket, "/".join(parts[:fixed]))
    found = [k for k in list_objects(base) if _glob_match(k.split("/"), parts[fixed:])]
    return sorted((base / k for k in found), key=str)


def _glob_match(names: list[str], pattern: list[str]) -> bool:
    """Whether path segments ``names`` match glob segments ``pattern`` (``**``: 0+ segments)."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return any(_glob_match(names[i:], pattern[1:]) for i in range(len(names) + 1))
    return (
        bool(names)
        and fnmatch.fnmatchcase(names[0], pattern[0])
        and _glob_match(names[1:], pattern[1:])
    )


def download(obj: RemoteObject, target: Path) -> RemoteObject:
    """Copy ``obj`` to ``target`` (temporary name, verified CRC32C, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            blob = client().bucket(obj.uri.bucket).blob(obj.uri.key)
            with explained("read", obj.uri):  # checked below, on the bytes written to disk
                blob.download_to_filename(
                    str(tmp), if_generation_match=obj.generation, checksum=None
                )
            got = file_checksums(tmp).crc32c
            if got == obj.crc32c:
                os.replace(tmp, target)
                return obj
            log.warning(
                f"{obj.uri}: download corrupted (CRC32C {got}, expected {obj.crc32c}); "
                f"attempt {attempt}/{ATTEMPTS}"
            )
        finally:
            tmp.unlink(missing_ok=True)
    raise DeepSegError(f"{obj.uri}: every download of it was corrupted; check the network")


# ---- writing --------------------------------------------------------------------------------
def upload(path: Path, uri: GsUri, if_generation_match: int) -> RemoteObject:
    """Upload ``path`` to ``uri`` if the object is still at generation ``if_generation_match``
    (0: absent); verified by CRC32C and MD5; Conflict when another writer got there first."""
    sums = file_checksums(path)
    bucket = client().bucket(uri.bucket)
    for attempt in range(1, ATTEMPTS + 1):
        blob = bucket.blob(uri.key)
        blob.metadata = {CRC_METADATA: sums.crc32c}
        try:
            with explained("upload", uri):
                try:
                    blob.upload_from_filename(
                        str(path),
                        if_generation_match=if_generation_match,
                        checksum="crc32c",
                        crc32c_checksum_value=sums.crc32c,
                    )
                except api_errors.PreconditionFailed:
                    raise Conflict(uri, stat(uri)) from None
                except api_errors.BadRequest as exc:  # how GCS refuses a body with a bad CRC32C
                    if attempt == ATTEMPTS:
                        raise
                    log.warning(
                        "%s: upload refused (%s); attempt %d/%d", uri, exc, attempt, ATTEMPTS
                    )
                    continue
        except DataCorruption:  # a resumable upload whose stored object does not match
            blob = bucket.get_blob(uri.key) or blob
        stored = _describe(uri, blob)
        if (stored.crc32c, stored.md5 or sums.md5) == (sums.crc32c, sums.md5):
            return stored
        got, want = f"CRC32C {stored.crc32c} MD5 {stored.md5}", f"{sums.crc32c} {sums.md5}"
        log.warning(
            f"{uri}: upload corrupted ({got}, file {want}); deleting generation "
            f"{stored.generation} and uploading again (attempt {attempt}/{ATTEMPTS})"
        )
        with explained("delete", uri), contextlib.suppress(api_errors.NotFound):
            blob.delete(if_generation_match=stored.generation)
        if_generation_match = 0
    raise DeepSegError(f"{uri}: every upload of {path} arrived corrupted; check the network")

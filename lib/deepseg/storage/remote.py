"""``gs://`` locations and what the bucket reports about an object; no Google client here.

These are the types every layer may hold (an experiment's paths, a run's outputs); the client
that talks to the bucket is ``gcs``, imported only when a gs:// path is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import DeepSegError

SCHEME = "gs://"
CRC_METADATA = "deepseg-crc32c"  # the CRC32C of the file an object was uploaded from
UPLOAD_WORKERS = 8  # parallel transfers; also the queue depth per worker before a stage waits
SYNC_FOLDERS = ("logs",)  # uploaded at once, merged on conflict by the writer (see ``mirror``)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class GsUri:
    """``gs://BUCKET/KEY``: an object, or a folder-like prefix (KEY without a trailing slash).

    Behaves like a ``Path`` where stages need it: ``uri / "name"``, ``.name``, ``.parent``.
    """

    __slots__ = ("bucket", "key")

    def __init__(self, bucket: str, key: str = "") -> None:
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"bucket name {bucket!r} is not valid (3-222 characters: a-z 0-9 . _ -)"
            )
        self.bucket, self.key = bucket, key.strip("/")

    @classmethod
    def parse(cls, text: str) -> GsUri:
        """``gs://bucket/a/b`` -> GsUri("bucket", "a/b"); ValueError names what is wrong."""
        if not text.startswith(SCHEME):
            raise ValueError(f"{text!r} does not start with {SCHEME}")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def __repr__(self) -> str:
        return f"GsUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GsUri) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def __truediv__(self, part: str) -> GsUri:
        return GsUri(self.bucket, f"{self.key}/{part}" if self.key else str(part))

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> GsUri:
        return GsUri(self.bucket, self.key.rpartition("/")[0])

    @property
    def vsi(self) -> str:
        """The path GDAL opens this object by (``/vsigs/bucket/key``, read by byte ranges)."""
        return f"/vsigs/{self.bucket}/{self.key}"


@dataclass(frozen=True)
class RemoteObject:
    """What GCS reports about one stored object (checksums base64, as GCS writes them)."""

    uri: GsUri
    generation: int
    size: int
    crc32c: str
    md5: str | None  # None for composite objects
    uploaded_crc32c: str | None  # CRC_METADATA: the source file's CRC32C, when DeepSeg wrote it

    @property
    def intact(self) -> bool:
        """False when the stored bytes differ from the file they were uploaded from."""
        return self.uploaded_crc32c is None or self.uploaded_crc32c == self.crc32c


class Conflict(DeepSegError):
    """Another writer changed the object since we looked (HTTP 412); ``current`` is it now."""

    def __init__(self, uri: GsUri, current: RemoteObject | None) -> None:
        super().__init__(f"{uri}: changed by another worker while this one was writing it")
        self.current = current

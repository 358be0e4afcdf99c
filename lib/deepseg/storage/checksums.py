"""CRC32C and MD5 of local files, base64-encoded as Google Cloud Storage reports them."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

BLOCK_BYTES = 8 << 20  # read size while hashing


@dataclass(frozen=True)
class Checksums:
    crc32c: str
    md5: str


def file_checksums(path: Path) -> Checksums:
    """CRC32C and MD5 of a local file, base64-encoded as GCS reports them."""
    crc, md5 = google_crc32c.Checksum(), hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            crc.update(block)
            md5.update(block)
    return Checksums(
        base64.b64encode(crc.digest()).decode(), base64.b64encode(md5.digest()).decode()
    )

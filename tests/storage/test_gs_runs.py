"""Runs with gs:// inputs and outputs against the GCS emulator (see gcs_emulator): the same
objects as a local run, resuming from the bucket, redoing corrupt objects, caches, sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml

from conftest import REPO, lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.qa.check import check_run, write_report
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage import gcs
from deepseg.storage.checksums import file_checksums
from deepseg.storage.paths import RunPaths
from deepseg.storage.remote import CRC_METADATA, GsUri
from deepseg.storage.sync import sync, sync_plan

pytest_plugins = ["gcs_emulator"]  # the emulator_url and bucket fixtures

STAGES = (create_tiles, predict, merge, vectorize)


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
    from deepseg.synthetic.demo import ensure_demo

    ensure_demo(REPO)
    monkeypatch.setenv("OGR_CURRENT_DATE", "2025-01-01T00:00:00Z")  # the GPKG's own timestamp
    monkeypatch.chdir(tmp_path)
    demo = REPO / "experiments" / "demo.yaml"
    local = tmp_path / "local.yaml"
    local.write_text(
        yaml.safe_dump({"extends": str(demo), "name": "demo", "inference": {"device": "cpu"}})
    )
    run(local)
    remote = {"extends": str(demo), "name": "demo"}  # the same name: the same preview title
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

    expected = without_logs(files(tmp_path / "runs" / "demo"))
    stored = bucket.objects("inference/demo/")
    # tile and probability stores, 2 COGs, the preview PNG, 1 GPKG, the pieces of 9 chunk cores
    assert len(expected) == 16 + 16 + 2 + 1 + 1 + 9
    assert expected["merged/all_preview.png"][:4] == b"\x89PNG"
    assert without_logs(stored) == expected
    for stage in ("create_tiles", "predict", "merge", "vectorize"):  # manifests in the bucket
        manifest = json.loads(stored[f"logs/{stage}_manifest.json"])
        assert {u["status"] for u in manifest["units"]} == {"done"}
        assert any(k.startswith(f"logs/manifest/{stage}/") for k in stored)
    log = json.loads(stored["logs/inference_log.json"])
    assert [log["stages"][s]["status"] for s in log["stages"]] == ["done"] * 4
    assert set(log["model_files"]) == {"best_model.pth", "normalization_stats.json", "config.yaml"}
    resolved = yaml.safe_load(stored["logs/experiment.yaml"])
    assert resolved["output"]["path"] == f"gs://{bucket}/inference/demo"


def test_interrupted_run_resumes_from_the_bucket(tmp_path, bucket, model_dir):
    """The state a crash leaves (some units uploaded, some finished only locally, some not
    done, a partial file) is completed by a rerun that uploads only what is missing; a rerun
    on another machine (an empty scratch folder) finds everything done in the bucket."""
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    first = bucket.objects("inference/test/")
    tiles = sorted(k for k in first if k.startswith("tiles/"))
    assert len(tiles) >= 6
    before = bucket.generations("inference/test/")
    scratch = tmp_path / "scratch"
    not_uploaded, lost = tiles[:2], tiles[2:4]  # finished here only / not finished anywhere
    for key in not_uploaded + lost:
        bucket.delete(f"inference/test/{key}")
    for key in lost:
        (scratch / key).unlink()
    (scratch / "tiles" / ".c9_r9.partial.kea").write_bytes(b"half a file")

    summary = run(experiment, [create_tiles])[0]

    assert summary["counts"]["chunks_written"] == len(lost)
    assert summary["skipped"] == len(tiles) - len(lost)
    assert without_logs(bucket.objects("inference/test/")) == without_logs(first)
    after = bucket.generations("inference/test/")
    changed = {k for k in after if after[k] != before.get(k)}
    assert without_logs({k: b"" for k in changed}).keys() == set(not_uploaded + lost)
    assert "logs/inference_log.json" in changed

    other = tmp_path / "other-machine.yaml"
    config = yaml.safe_load(experiment.read_text())
    config["output"]["scratch"] = str(tmp_path / "other-scratch")
    other.write_text(yaml.safe_dump(config))
    summary = run(other, [create_tiles])[0]
    assert summary["counts"] == {} and summary["skipped"] == len(tiles)
    assert not (tmp_path / "other-scratch" / "tiles").exists()  # skipped without downloading
    (tmp_path / "other-scratch" / "tiles").mkdir(parents=True)  # it holds one store already
    (tmp_path / "other-scratch" / tiles[-1]).write_bytes(first[tiles[-1]])
    predicted = run(other, [predict, merge, vectorize])[0]  # reads the rest from the bucket
    assert predicted["counts"]["chunks_written"] == len(tiles)
    run(experiment, [predict, merge, vectorize], force=True)
    assert without_logs(files(tmp_path / "scratch")) == without_logs(
        bucket.objects("inference/test/")
    )


def test_corrupt_object_in_bucket_is_redone_by_rerun_and_sync(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    good = bucket.objects("inference/test/")
    key = sorted(k for k in good if k.startswith("tiles/"))[0]
    intended = file_checksums(tmp_path / "scratch" / key).crc32c
    bucket.put(f"inference/test/{key}", good[key][:-10] + b"x" * 10, {CRC_METADATA: intended})
    (tmp_path / "scratch" / key).unlink()  # a fresh machine: only the bucket knows

    assert run(experiment, [create_tiles])[0]["counts"]["chunks_written"] == 1
    assert bucket.objects("inference/test/")[key] == good[key]

    bucket.put(f"inference/test/{key}", b"garbage", {CRC_METADATA: intended})
    paths = RunPaths.of(load_experiment(experiment))
    assert [(p.name, why) for p, why, _ in sync_plan(paths)] == [
        (Path(key).name, "corrupt in the bucket")
    ]
    sync(load_experiment(experiment))
    assert bucket.objects("inference/test/")[key] == good[key]


# ---- inputs: the cache, the model ---------------------------------------------------------
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
    assert log["model_files"]["normalization_stats.json"]["md5"] == file_checksums(stats).md5


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
        "deepseg: error: gs://no-such-bucket-here/run/tiles (bucket no-such-bucket-here, "
        "object run/tiles): bucket no-such-bucket-here does not exist (HTTP 404); check the path"
    )


# ---- sync ---------------------------------------------------------------------------------
def test_sync_dry_run_lists_and_sync_uploads(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment, [create_tiles])
    everything = bucket.objects("inference/test/")
    gone = sorted(k for k in everything if k.startswith("tiles/"))[:3]
    for key in gone:
        bucket.delete(f"inference/test/{key}")
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
    assert len(bucket.objects("inference/test/")) == len(everything) - len(gone)

    assert sync(load_experiment(experiment)) == {
        "files": len(gone),
        "bytes": sum(len(everything[k]) for k in gone),
    }
    assert bucket.objects("inference/test/") == everything
    assert sync(load_experiment(experiment), dry_run=True)["files"] == 0


def test_check_of_a_gs_run_reads_the_bucket_from_another_machine(tmp_path, bucket, model_dir):
    experiment = gs_experiment(tmp_path, bucket, model_dir, grid={"chunk_tiles": 1})
    run(experiment)
    config = yaml.safe_load(experiment.read_text())
    config["output"]["scratch"] = str(tmp_path / "other-scratch")  # nothing local there
    other = tmp_path / "other-machine.yaml"
    other.write_text(yaml.safe_dump(config))
    report = check_run(load_experiment(other))
    assert report["ok"], report
    stores = sorted(k for k in bucket.objects("inference/test/") if k.startswith("predictions/"))
    bucket.delete(f"inference/test/{stores[0]}")  # lost from the bucket
    config["output"]["scratch"] = str(tmp_path / "third-scratch")  # not in a local copy either
    other.write_text(yaml.safe_dump(config))
    exp = load_experiment(other)
    report = check_run(exp)
    [entry] = report["tiles_not_predicted"]
    chunk = Path(stores[0]).stem
    assert (entry["chunk"], entry["reason"]) == (
        chunk,
        f"its probability store {chunk}.kea is missing",
    )
    write_report(exp, report)
    RunPaths.of(exp).flush()
    in_bucket = json.loads(bucket.objects("inference/test/logs/")["check.json"])
    assert in_bucket["ok"] is False and in_bucket["counts"]["tiles_not_predicted"] > 0

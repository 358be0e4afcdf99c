"""Units of work and the manifest: failures recorded and retried, shards, resumable reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Poisoned, lattice_transform, write_experiment, write_model, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.run.manifest import fold
from deepseg.run.stage import select_shard
from deepseg.run.work import SYSTEMATIC_FAILURES
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import RunPaths

AT = (3 * 64 + 10, 5 * 64 + 20)  # grid (col, row) of the raster's pixel (0, 0)


def scene(folder: Path, poison: bool) -> Path:
    """A 200 x 260 px raster, 1-254 in band 1, with one 255 pixel near its far corner and
    nodata (0) in its top-left 60 x 70 px: chunk c00002_r00004 reaches only that corner."""
    data = np.random.default_rng(2).integers(1, 255, size=(3, 200, 260), dtype=np.uint8)
    data[:, :60, :70] = 0
    if poison:
        data[0, 190, 250] = 255
    return write_raster(folder / f"scene_{poison}.tif", data, lattice_transform(*AT))


def read_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name[0] != "."}


def test_failed_unit_is_recorded_others_finish_and_a_rerun_retries_only_it(tmp_path):
    clean = load_experiment(
        write_experiment(tmp_path / "a", [scene(tmp_path, True)], write_model(tmp_path / "good"))
    )
    create_tiles(clean)
    predict(clean)
    merge(clean)
    bad_model = write_model(tmp_path / "bad", Poisoned())
    exp = load_experiment(write_experiment(tmp_path / "b", [scene(tmp_path, True)], bad_model))
    create_tiles(exp)
    # the poisoned pixel, grid (452, 530), lies in tiles of chunks columns 6-7, rows 7-8
    poisoned = ["c00006_r00007", "c00006_r00008", "c00007_r00007", "c00007_r00008"]
    with pytest.raises(DeepSegError, match=r"predict: 4 unit\(s\) failed \(" + ", ".join(poisoned)):
        predict(exp)
    paths = RunPaths.of(exp)
    manifest = json.loads((paths.logs / "predict_manifest.json").read_text())
    records = {r["unit"]: r for r in manifest["units"]}
    staged = [p.stem for p in paths.tile_stores()]
    assert len(records) == 30 and len(staged) == 29
    assert set(records) - set(staged) == {"c00002_r00004"}  # staged and found without tiles
    assert records["c00002_r00004"]["status"] == "done"
    assert records["c00002_r00004"]["outputs"] == []
    for unit in poisoned:
        failed = records[unit]
        assert failed["status"] == "failed"
        assert failed["error"].endswith("RuntimeError: poisoned pixel")
        assert failed["attempts"] == 1 and failed["host"] and failed["started"] < failed["ended"]
    assert {r["status"] for u, r in records.items() if u not in poisoned} == {"done"}
    assert records["c00004_r00007"]["counts"] == {
        "chunks_written": 1,
        "tiles": 4,
        "tiles_with_detection": 4,
        "values_clipped": 0,
    }
    before = {p: p.stat().st_mtime_ns for p in paths.prob_stores()}
    assert len(before) == 25
    # a rerun with the same model retries the failed chunks only
    with pytest.raises(DeepSegError, match="poisoned pixel"):
        predict(exp)
    assert {p: p.stat().st_mtime_ns for p in paths.prob_stores() if p in before} == before
    # the rerun tries the poisoned chunks in order and stops after SYSTEMATIC_FAILURES (3) in
    # a row with no success, so the 4th keeps its one attempt from the first run
    states = fold(paths, "predict")
    attempts = [(states[u].attempts, states[u].status) for u in poisoned]
    assert attempts == [(2, "failed")] * SYSTEMATIC_FAILURES + [(1, "failed")]
    # the model is fixed in place: every chunk is redone, one survey map from one model
    write_model(bad_model)
    predict(exp)
    assert all(p.stat().st_mtime_ns != before[p] for p in before)
    assert {fold(paths, "predict")[u].status for u in poisoned} == {"done"}
    merge(exp)
    assert read_bytes(paths.merged) == read_bytes(RunPaths.of(clean).merged)


def test_systematic_failure_stops_the_worker(tmp_path):
    data = np.full((3, 200, 260), 255, dtype=np.uint8)  # every chunk poisoned
    raster = write_raster(tmp_path / "all.tif", data, lattice_transform(*AT))
    exp = load_experiment(
        write_experiment(tmp_path, [raster], write_model(tmp_path / "bad", Poisoned()))
    )
    create_tiles(exp)
    with pytest.raises(DeepSegError, match="the first 3 units all failed"):
        predict(exp)
    states = fold(RunPaths.of(exp), "predict")
    assert sorted(s.status for s in states.values()).count("failed") == 3  # not all 30 tried


def test_select_shard_covers_every_unit_once():
    units = [f"u{i:03d}" for i in range(23)]
    shards = [select_shard(units, (i, 4)) for i in range(4)]
    assert sorted(sum(shards, [])) == units
    assert [len(s) for s in shards] == [6, 6, 6, 5]


def test_shards_together_equal_one_run(tmp_path, model_dir):
    raster = scene(tmp_path, False)
    whole = load_experiment(write_experiment(tmp_path / "whole", [raster], model_dir))
    create_tiles(whole)
    predict(whole)
    sharded = load_experiment(write_experiment(tmp_path / "sharded", [raster], model_dir))
    units = sorted(fold(RunPaths.of(whole), "predict"))  # every chunk, empty ones too
    assert len(units) == 30
    for i in range(3):
        create_tiles(sharded, shard=(i, 3))
        predict(sharded, shard=(i, 3))
        # shard i adds exactly its own units, in both stages
        expected = {u for j in range(i + 1) for u in select_shard(units, (j, 3))}
        assert set(fold(RunPaths.of(sharded), "create_tiles")) == expected
        assert set(fold(RunPaths.of(sharded), "predict")) == expected
    assert read_bytes(RunPaths.of(sharded).predictions) == read_bytes(
        RunPaths.of(whole).predictions
    )

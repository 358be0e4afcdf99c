"""The run log holds every field of the deployment spec, each equal to an independent count."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

import numpy as np
import pytest
import rasterio

from conftest import reference_probability, write_experiment
from deepseg.config import load_experiment
from deepseg.geo.grid import TileGrid
from deepseg.run.journal import Journal
from deepseg.run.manifest import fold
from deepseg.run.runlog import SPEC_FIELDS, totals
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage.paths import RunPaths
from shared_scenes import corner_scene, corner_valid_mask


def tile_facts(grid: TileGrid, prob: np.ndarray) -> tuple[int, int, int]:
    """Tiles over the raster with valid data, with a pixel at or above 0.5, and without
    valid data, by brute force over every tile that overlaps the raster."""
    box, valid = corner_valid_mask()
    cols, rows = grid.tiles_touching(box)
    with_data = detected = no_data = 0
    for col in cols:
        for row in rows:
            part = grid.tile_box(col, row).intersection(box)
            here = valid[part.slices_in(box)]
            with_data += bool(here.any())
            no_data += not here.any()
            detected += bool((prob[part.slices_in(box)] >= 0.5).any())
    return with_data, detected, no_data


def test_every_spec_field_is_recorded_and_counts_all_done_units(tmp_path, model_dir, caplog):
    raster = corner_scene(tmp_path)
    exp = load_experiment(
        write_experiment(tmp_path, [raster], model_dir, input={"basemap_version": "planet-q3"})
    )
    paths, grid = RunPaths.of(exp), TileGrid.from_experiment(exp)
    with rasterio.open(raster) as src:
        pixels = src.read()
    prob = reference_probability(pixels, corner_valid_mask()[1])
    with_data, detected, no_data = tile_facts(grid, prob)
    assert (with_data, no_data) == (76, 4)  # the 60 x 70 px nodata corner holds 2 x 2 tiles
    started = dt.datetime.now(dt.timezone.utc)
    with caplog.at_level(logging.WARNING, logger="deepseg"):
        create_tiles(exp)
    warnings = [r.getMessage() for r in caplog.records if "no valid data" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"create_tiles: {no_data} tile(s)")
    # predicted in two halves: the totals cover both, the stage entry only the last half
    predict(exp, shard=(0, 2))
    first = json.loads(paths.run_log.read_text())["n_tiles_processed"]
    predict(exp, shard=(1, 2))
    merge(exp)
    vectorize(exp)
    log = json.loads(paths.run_log.read_text())
    assert set(SPEC_FIELDS) <= set(log) and all(log[k] is not None for k in SPEC_FIELDS)
    assert 0 < first < with_data and log["stages"]["predict"]["tiles"] == with_data - first
    assert log["n_tiles_processed"] == with_data
    assert log["n_tiles_with_detection"] == detected
    assert log["n_tiles_skipped_no_data"] == no_data
    positive_px = int(((prob >= 0.5) & corner_valid_mask()[1]).sum())
    assert log["total_rts_area_km2"] == round(positive_px * 9.0 / 1e6, 6)
    assert log["gpu_type"] == "cpu" and log["batch_size_used"] == 7
    assert log["basemap_version"] == "planet-q3" and log["experiment"] == exp.to_dict()
    stats = (model_dir / "normalization_stats.json").read_bytes()
    assert log["normalization_stats_hash"] == hashlib.md5(stats).hexdigest()
    assert (log["model_version"], log["threshold"], log["tta_config"]) == (
        "test-pointwise",
        0.5,
        "none",
    )
    assert log["scales_used"] == [1.0]
    ends = [s.ended for s in fold(paths, "predict").values() if s.outputs]
    inference = dt.datetime.fromisoformat(log["inference_date"])
    assert inference == dt.datetime.fromisoformat(max(ends)).replace(microsecond=0)
    assert started.replace(microsecond=0) <= inference <= dt.datetime.now(dt.timezone.utc)
    # processing time: every invocation of the four stages, the two predict halves included
    stages = log["stages"]
    assert stages["predict"]["seconds_total"] > stages["predict"]["seconds"]
    total_s = sum(
        stages[s]["seconds_total"] for s in ("create_tiles", "predict", "merge", "vectorize")
    )
    assert log["processing_time_hours"] == round(total_s / 3600, 6)
    before = stages["merge"]["seconds_total"]
    merge(exp)  # nothing to do: counted, skipped units recorded
    entry = json.loads(paths.run_log.read_text())["stages"]["merge"]
    assert (entry["units"], entry["skipped"], entry["done"], entry["failed"]) == (1, 1, 1, 0)
    assert entry["seconds_total"] == pytest.approx(before + entry["seconds"], abs=2e-3)
    assert (paths.logs / "experiment.yaml").is_file()
    assert log["n_chunks_counts_unknown"] == 0
    chunk = next(u for u, s in sorted(fold(paths, "predict").items()) if s.counts["tiles"])
    # found complete on disk by a later worker:
    Journal(paths, "predict", "later").record(chunk, "done", outputs=[], recovered=True)
    recovered = totals(paths)  # its tiles are not counted, and the totals say so
    assert recovered["n_chunks_counts_unknown"] == 1
    assert 0 < recovered["n_tiles_processed"] < with_data


def test_a_tile_list_counts_only_listed_tiles_as_skipped(tmp_path, model_dir):
    """Unlisted tiles are not candidates: only listed tiles over nodata count as skipped."""
    grid = TileGrid.from_experiment(
        load_experiment(write_experiment(tmp_path / "g", [corner_scene(tmp_path)], model_dir))
    )
    listed = [(5, 9), (6, 10), (7, 11)]  # two over the nodata corner, one with data
    lines = ["tile_id,minx,miny,maxx,maxy"] + [
        ",".join([grid.tile_id(c, r), *map(repr, grid.bounds(grid.tile_box(c, r)))])
        for c, r in listed
    ]
    (tmp_path / "tiles.csv").write_text("\n".join(lines) + "\n")
    exp = load_experiment(
        write_experiment(
            tmp_path,
            [corner_scene(tmp_path)],
            model_dir,
            grid={"tile_list": str(tmp_path / "tiles.csv")},
        )
    )
    summary = create_tiles(exp)
    assert (summary["counts"]["tiles"], summary["counts"]["tiles_no_data"]) == (1, 2)

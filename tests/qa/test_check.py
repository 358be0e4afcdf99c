"""The final check: every tile not predicted, chunk missing from the merged rasters and polygon
outside the predicted area is reported, with ids, against an independent count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import rasterio
import shapely

from conftest import REPO, Poisoned, lattice_transform, write_experiment, write_model, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.geo.grid import TileGrid
from deepseg.qa.check import check_run
from deepseg.run.stage import select_shard
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import LAYER, vectorize
from deepseg.storage.paths import RunPaths
from shared_scenes import CORNER_AT, corner_scene, corner_valid_mask

FINDINGS = (
    "chunks_not_staged",
    "tiles_not_predicted",
    "chunks_missing_from_merged",
    "polygons_outside_predicted_area",
    "outputs_missing",
)


def tiles_over_data(grid: TileGrid, chunk: tuple[int, int]) -> list[str]:
    """Ids of the chunk's tiles holding a valid pixel, by brute force over its tiles."""
    box, valid = corner_valid_mask()
    ids = []
    for col, row in grid.chunk_tiles_in(*chunk):
        part = grid.tile_box(col, row).intersection(box)
        if part is not None and valid[part.slices_in(box)].any():
            ids.append(grid.tile_id(col, row))
    return sorted(ids)


def experiment(folder: Path, raster: Path, model: Path):
    return load_experiment(write_experiment(folder, [raster], model))


def run_all(exp) -> None:
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A complete run: (its folder, the raster, the model); copy it before changing it."""
    base = tmp_path_factory.mktemp("finished")
    raster, model = corner_scene(base), write_model(base / "model")
    run_all(experiment(base / "run", raster, model))
    return base / "run", raster, model


def copy_run(finished, folder: Path):
    """An experiment whose outputs are a copy of the finished run's."""
    run, raster, model = finished
    shutil.copytree(run / "out", folder / "out")
    return experiment(folder, raster, model)


def reported(report: dict) -> dict[str, int]:
    return {key: len(report[key]) for key in FINDINGS if report[key]}


def deepseg_check(experiment_yaml: Path) -> subprocess.CompletedProcess:
    """``bash DeepSeg.sh EXPERIMENT check`` in this test environment, as a user runs it."""
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:  # use the test environment, as an activated venv would
        env["VIRTUAL_ENV"] = sys.prefix
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = ["bash", str(REPO / "DeepSeg.sh"), str(experiment_yaml), "check"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_a_complete_run_passes_and_a_deleted_raster_fails_the_command(finished, tmp_path):
    exp = copy_run(finished, tmp_path)
    paths = RunPaths.of(exp)
    result = deepseg_check(tmp_path / "experiment.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "check: OK: nothing missing (30 chunks of the grid)" in result.stderr
    report = json.loads((paths.logs / "check.json").read_text())
    assert report["ok"] and reported(report) == {} and report["not_checked"] == {}
    assert report["counts"]["chunks"] == 30  # 5 chunk rows x 6 chunk columns over the raster
    # a merged raster deleted: the command names it, reports every chunk of its region, and
    # exits 1
    paths.region_binary("all").unlink()
    result = deepseg_check(tmp_path / "experiment.yaml")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "check: outputs_missing: 1: " + str(paths.region_binary("all")) in result.stderr
    report = json.loads((paths.logs / "check.json").read_text())
    assert report["outputs_missing"] == [str(paths.region_binary("all"))]
    merged = report["chunks_missing_from_merged"]
    assert len(merged) == len(paths.prob_stores()) == 29  # c00002_r00004: nodata only
    assert {m["reason"] for m in merged} == {"merged raster(s) missing: all_binary.tif"}
    run_log = json.loads(paths.run_log.read_text())
    assert run_log["check"]["ok"] is False
    assert run_log["check"]["counts"]["chunks_missing_from_merged"] == 29


def test_chunks_create_tiles_did_not_finish_and_tiles_never_predicted(tmp_path, model_dir):
    exp = experiment(tmp_path, corner_scene(tmp_path), model_dir)
    create_tiles(exp, shard=(0, 2))  # half the chunks staged, nothing predicted
    report = check_run(exp)
    grid = TileGrid.from_experiment(exp)
    units = sorted(grid.chunk_id(c, r) for r in range(4, 9) for c in range(2, 8))
    assert [c["chunk"] for c in report["chunks_not_staged"]] == select_shard(units, (1, 2))
    assert {c["reason"] for c in report["chunks_not_staged"]} == {
        "create_tiles has no record of it"
    }
    expected = {
        u: tiles_over_data(grid, grid.parse_chunk_id(u)) for u in select_shard(units, (0, 2))
    }
    expected = {u: ids for u, ids in expected.items() if ids}  # a chunk over nodata has none
    found = {t["chunk"]: t["tiles"] for t in report["tiles_not_predicted"]}
    assert found == expected
    assert report["counts"]["tiles_not_predicted"] == sum(map(len, expected.values()))
    assert {t["reason"] for t in report["tiles_not_predicted"]} == {"predict has no record of it"}
    assert "no probability stores" in report["not_checked"]["merged rasters and polygons"]
    assert not report["ok"]


def test_failed_units_are_reported_with_their_error_and_tiles(tmp_path):
    raster = corner_scene(tmp_path)
    data = rasterio.open(raster).read()
    data[0, 190, 250] = 255  # the Poisoned model fails on this value: grid pixel (452, 530)
    raster = write_raster(tmp_path / "poisoned.tif", data, lattice_transform(*CORNER_AT))
    exp = experiment(tmp_path, raster, write_model(tmp_path / "bad", Poisoned()))
    create_tiles(exp)
    with pytest.raises(DeepSegError, match=r"4 unit\(s\) failed"):
        predict(exp)
    merge(exp)
    vectorize(exp)
    report = check_run(exp)
    assert reported(report) == {"tiles_not_predicted": 4}
    grid = TileGrid.from_experiment(exp)
    # tiles covering pixel (452, 530): columns 13-14, rows 15-16 -> chunks (6-7, 7-8)
    poisoned = [grid.chunk_id(c, r) for c in (6, 7) for r in (7, 8)]
    for entry, unit in zip(report["tiles_not_predicted"], poisoned, strict=True):
        assert entry["chunk"] == unit
        assert entry["reason"].startswith("predict failed: ")
        assert entry["reason"].endswith("RuntimeError: poisoned pixel")
        assert entry["tiles"] == tiles_over_data(grid, grid.parse_chunk_id(unit))


def test_a_store_deleted_before_merge_is_reported_and_then_missing_from_merged(finished, tmp_path):
    exp = copy_run(finished, tmp_path)
    paths, grid = RunPaths.of(exp), TileGrid.from_experiment(exp)
    unit = "c00005_r00007"  # its core lies inside the raster, away from the nodata corner
    paths.prob_store(unit).unlink()
    merge(exp, force=True)
    vectorize(exp, force=True)
    report = check_run(exp)
    assert reported(report) == {"tiles_not_predicted": 1}
    [entry] = report["tiles_not_predicted"]
    assert entry["reason"] == "its probability store c00005_r00007.kea is missing"
    assert entry["tiles"] == tiles_over_data(grid, (5, 7)) and len(entry["tiles"]) == 4
    # predicted again after the merge: its tiles are there, but the merged raster lacks the
    # pixels no other chunk's footprint reaches (the core minus the 32 px neighbours overlap)
    predict(exp)
    report = check_run(exp)
    assert reported(report) == {"chunks_missing_from_merged": 1}
    [entry] = report["chunks_missing_from_merged"]
    assert (entry["chunk"], entry["region"]) == (unit, "all")
    assert entry["missing_px"] == (64 - 32) * (64 - 32)
    merge(exp, force=True)
    assert check_run(exp)["ok"]


def test_polygons_outside_the_predicted_area_are_reported_with_their_area(finished, tmp_path):
    exp = copy_run(finished, tmp_path)
    paths = RunPaths.of(exp)
    frame = gpd.read_file(paths.polygons, layer=LAYER)
    res = 3.0

    def pixels(col0: int, row0: int, col1: int, row1: int) -> shapely.Polygon:
        x0, y0 = lattice_transform(*CORNER_AT) @ (col0, row0)
        x1, y1 = lattice_transform(*CORNER_AT) @ (col1, row1)
        return shapely.box(x0, y1, x1, y0)

    handmade = {
        "far_away": pixels(-500, -500, -490, -480),  # 200 px beyond every store
        "over_the_corner": pixels(60, 50, 80, 70),  # 10 x 10 of its 20 x 20 px over nodata
        "beyond_the_edge": pixels(250, 150, 270, 160),  # 10 x 10 px right of the raster's
        # last column (259): no store predicts there, though the last footprints reach it
    }
    extra = gpd.GeoDataFrame(
        {"rts_id": list(handmade), "region": "all"}, geometry=list(handmade.values()), crs=frame.crs
    )
    pd.concat([frame, extra]).to_file(paths.polygons, layer=LAYER, driver="GPKG")
    report = check_run(exp)
    assert reported(report) == {"polygons_outside_predicted_area": 3}
    found = {p["rts_id"]: p["outside_m2"] for p in report["polygons_outside_predicted_area"]}
    assert found == {
        "far_away": 200 * res * res,
        "over_the_corner": 100 * res * res,
        "beyond_the_edge": 100 * res * res,
    }

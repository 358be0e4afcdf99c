"""evaluate.py on hand-made runs whose scores are known exactly (see handmade_run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from rasterio.features import rasterize

from conftest import REPO, lattice_transform, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.qa.evaluate import evaluate
from deepseg.qa.pixel_scan import scan_region
from deepseg.storage.paths import RunPaths
from handmade_run import (
    COL0,
    FN_PX,
    FP_PX,
    HEIGHT,
    REFERENCE,
    ROW0,
    TN_PX,
    TP_PX,
    TRANSFORM,
    WIDTH,
    counts,
    hand_run,
    px_box,
    write_polygons,
)


def test_hand_made_run_scores_exactly(tmp_path, model_dir):
    exp = load_experiment(hand_run(tmp_path, model_dir))
    report = evaluate(exp, reference=tmp_path / "reference.gpkg")
    pixel = report["pixel"]
    assert (pixel["tp_px"], pixel["fp_px"], pixel["fn_px"], pixel["tn_px"]) == (
        18_950,
        2_700,
        21_950,
        176_400,
    )
    assert (TP_PX, FP_PX, FN_PX, TN_PX) == (18_950, 2_700, 21_950, 176_400)
    assert pixel["precision"] == 18_950 / 21_650
    assert pixel["recall"] == 18_950 / 40_900
    assert pixel["f1"] == 37_900 / (37_900 + 2_700 + 21_950)
    assert pixel["iou"] == 18_950 / (18_950 + 2_700 + 21_950)
    assert report["evaluated_km2"] == pytest.approx(220_000 * 9 / 1e6)
    # objects: A-rA (1.0), B-rB (0.667), H-rH (0.679) match; C and D are FP; rC and rE FN
    obj = report["object"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (3, 2, 2)
    assert (obj["precision"], obj["recall"], obj["f1"]) == (0.6, 0.6, 0.6)
    assert (obj["references"], obj["predictions"]) == (5, 5)
    assert report["by_region"]["all"]["object"] == {
        k: obj[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")
    }
    assert report["by_region"]["all"]["pixel"] == {
        k: pixel[k] for k in report["by_region"]["all"]["pixel"]
    }
    written = json.loads(RunPaths.of(exp).evaluation_report.read_text())
    assert written["pixel"]["precision"] == round(18_950 / 21_650, 6)
    assert written["object"] == obj
    # TP (H too) and FN by the reference's size, FP by the prediction's
    sizes = {k: (v["tp"], v["fp"], v["fn"]) for k, v in report["by_size"].items()}
    assert sizes == {
        "lt_0.01_km2": (1, 2, 1),
        "0.01_to_0.1_km2": (1, 0, 0),
        "ge_0.1_km2": (1, 0, 1),
    }
    errors = gpd.read_file(RunPaths.of(exp).evaluation_errors, layer="evaluation_errors")
    rows = sorted(errors[["kind", "prediction_id", "reference_index"]].itertuples(index=False))
    assert rows == [
        ("FN", "", 2),
        ("FN", "", 3),
        ("FP", "C", -1),
        ("FP", "D", -1),
        ("TP", "A", 0),
        ("TP", "B", 1),
        ("TP", "H", 4),
    ]
    tp = errors[errors["kind"] == "TP"].set_index("prediction_id")
    assert tp.loc["B", "iou"] == pytest.approx(8_000 / 12_000)
    assert tp.loc["H", "iou"] == pytest.approx(10_450 / 15_400)
    assert (tp.loc["H", "area_m2"], tp.loc["H", "size_class"]) == (10_450 * 9, "ge_0.1_km2")


def test_aoi_reprojected_files_and_iou(tmp_path, model_dir):
    exp = load_experiment(hand_run(tmp_path, model_dir))
    wgs84 = write_polygons(tmp_path / "reference.geojson", REFERENCE, crs="EPSG:4326")
    report = evaluate(exp, reference=wgs84)  # reprojected to EPSG:3413: the same pixels
    assert counts(report["pixel"]) == (TP_PX, FP_PX, FN_PX, TN_PX)
    assert report["object"]["tp"] == 3
    # AOI: columns 0..249 (a GeoJSON, so EPSG:4326): A, B, H, rA, rB, rH are in it
    aoi = write_polygons(tmp_path / "aoi.geojson", [(0, 0, 250, HEIGHT)], crs="EPSG:4326")
    report = evaluate(exp, reference=tmp_path / "reference.gpkg", aoi=aoi)
    # tp: A 400 + B and rB 8,000 + H left of column 250: 70 x 95 = 6,650
    # fp: B's columns 100..119: 2,000; fn: rB's columns 200..219: 2,000 + rH's rows
    # 345..389 left of column 250: 45 x 70 = 3,150; evaluated 250 x 400 = 100,000 px
    assert counts(report["pixel"]) == (15_050, 2_000, 5_150, 100_000 - 15_050 - 2_000 - 5_150)
    assert [report["object"][k] for k in ("tp", "fp", "fn")] == [3, 0, 0]
    # an AOI without RTS (columns 0..89, rows 160..399): only true negatives, no objects
    empty = write_polygons(tmp_path / "empty.gpkg", [(0, 160, 90, HEIGHT)])
    report = evaluate(exp, reference=tmp_path / "reference.gpkg", aoi=empty)
    assert counts(report["pixel"]) == (0, 0, 0, 90 * 240)
    assert report["pixel"]["precision"] is None and report["object"]["tp"] == 0
    assert report["object"]["precision"] is None and report["object"]["recall"] is None
    assert len(gpd.read_file(RunPaths.of(exp).evaluation_errors)) == 0
    with pytest.raises(DeepSegError, match=f"{empty}: cannot calibrate, no reference pixel"):
        evaluate(exp, reference=tmp_path / "reference.gpkg", aoi=empty, calibrate=True)
    assert not RunPaths.of(exp).calibration.exists()
    strict = evaluate(exp, reference=tmp_path / "reference.gpkg", iou=0.9)  # only A-rA
    assert [strict["object"][k] for k in ("tp", "fp", "fn")] == [1, 4, 4]
    loose = evaluate(exp, reference=tmp_path / "reference.gpkg", iou=0.1)  # and C-rC (1/7)
    assert [loose["object"][k] for k in ("tp", "fp", "fn")] == [4, 1, 1]


def test_regions_are_scored_apart_and_add_up(tmp_path, model_dir):
    west, east = px_box(0, 0, 300, HEIGHT), px_box(300, 0, WIDTH, HEIGHT)
    exp_path = hand_run(
        tmp_path, model_dir, regions={"west": list(west.bounds), "east": list(east.bounds)}
    )
    paths = RunPaths.of(load_experiment(exp_path))
    for kind in ("prob", "binary"):  # split the hand-made "all" rasters at column 300
        with rasterio.open(paths.merged / f"all_{kind}.tif") as src:
            data, nodata = src.read(), src.nodata
        write_raster(paths.merged / f"west_{kind}.tif", data[:, :, :300], TRANSFORM, nodata=nodata)
        east_transform = lattice_transform(COL0 + 300, ROW0)
        write_raster(
            paths.merged / f"east_{kind}.tif", data[:, :, 300:], east_transform, nodata=nodata
        )
    report = evaluate(load_experiment(exp_path), reference=tmp_path / "reference.gpkg")
    regions = report["by_region"]
    # west (300 x 400 px): predicted A, B, H = 20,850 px; reference rA, rB, rH = 25,800 px
    assert counts(regions["west"]["pixel"]) == (18_850, 2_000, 6_950, 92_200)
    # east (valid 250 x 400 px): predicted C, D = 800 px; reference rC, rE = 15,100 px
    assert counts(regions["east"]["pixel"]) == (100, 700, 15_000, 84_200)
    assert counts(report["pixel"]) == (TP_PX, FP_PX, FN_PX, TN_PX)
    objects = {name: [r["object"][k] for k in ("tp", "fp", "fn")] for name, r in regions.items()}
    assert objects == {"west": [3, 0, 0], "east": [0, 2, 2]}


def test_block_streaming_equals_whole_image_counts(tmp_path):
    """Random probabilities, 37 random references and a triangular AOI over a 700 x 500 px
    raster in 256 px blocks: the streamed counts equal whole-image numpy counts."""
    rng = np.random.default_rng(3)
    prob = rng.random((500, 700), dtype=np.float32)
    prob[:60, :90] = -1  # a nodata corner
    binary = np.where(prob >= 0.37, 1, 0).astype(np.uint8)
    binary[prob == -1] = 255
    write_raster(tmp_path / "p.tif", prob[None], TRANSFORM, nodata=-1)
    write_raster(tmp_path / "b.tif", binary[None], TRANSFORM, nodata=255)
    centres = TRANSFORM @ (rng.uniform(0, 700, 37), rng.uniform(0, 500, 37))
    refs = shapely.buffer(shapely.points(*centres), rng.uniform(3, 120, 37))
    # vertices off the lattice: a pixel centre exactly on an edge is a tie either way
    corners = [(-50.3, 40.7), (650.2, 10.1), (300.6, 530.9)]
    aoi = shapely.Polygon([TRANSFORM @ corner for corner in corners])
    tally, pixel_m2 = scan_region("r", tmp_path / "p.tif", tmp_path / "b.tif", refs, aoi, [])

    truth = rasterize(refs, (500, 700), transform=TRANSFORM) > 0
    evaluated = (prob != -1) & (rasterize([aoi], (500, 700), transform=TRANSFORM) > 0)
    predicted = binary == 1
    expected = [predicted & truth, predicted & ~truth, ~predicted & truth, ~predicted & ~truth]
    assert (tally.tp, tally.fp, tally.fn, tally.tn) == tuple(
        int((m & evaluated).sum()) for m in expected
    )
    assert 0 < tally.tp and 0 < tally.evaluated < (prob != -1).sum() and pixel_m2 == 9.0
    tp, fp, _ = tally.curve()
    for k in (0, 1, 250, 370, 500, 999, 1000):
        kept = (prob >= k / 1000) & evaluated
        assert (tp[k], fp[k]) == ((kept & truth).sum(), (kept & ~truth).sum()), k


def test_rerun_writes_the_same_bytes(tmp_path, model_dir):
    exp = load_experiment(hand_run(tmp_path, model_dir))
    paths = RunPaths.of(exp)
    evaluate(exp, reference=tmp_path / "reference.gpkg")
    first = [paths.evaluation_report.read_bytes(), paths.evaluation_pr_curve.read_bytes()]
    evaluate(exp, reference=tmp_path / "reference.gpkg")
    assert [paths.evaluation_report.read_bytes(), paths.evaluation_pr_curve.read_bytes()] == first
    assert paths.evaluation_pr_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(paths.root.rglob(".*partial*"))
    log = json.loads(paths.run_log.read_text())
    assert log["stages"]["evaluate"]["status"] == "done"
    assert (log["stages"]["evaluate"]["tp"], log["stages"]["evaluate"]["fp"]) == (3, 2)


def one_line_error(exp, **kwargs) -> str:
    with pytest.raises(DeepSegError) as info:
        evaluate(exp, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_errors_name_the_file_at_fault(tmp_path, model_dir):
    exp = load_experiment(hand_run(tmp_path, model_dir))
    reference = tmp_path / "reference.gpkg"
    missing = tmp_path / "nope.gpkg"
    assert one_line_error(exp, reference=missing) == (
        f"{missing}: reference file not found (check evaluate.reference or --reference)"
    )
    assert "pass --reference FILE or set evaluate.reference in" in one_line_error(exp)
    no_crs = write_polygons(tmp_path / "nocrs.shp", REFERENCE, crs=None)
    assert one_line_error(exp, reference=no_crs) == (
        f"{no_crs}: the reference polygons have no CRS; save them with one (e.g. EPSG:3413)"
    )
    far = gpd.read_file(reference).translate(xoff=1e5)
    far.to_file(tmp_path / "far.gpkg")
    assert one_line_error(exp, reference=tmp_path / "far.gpkg").startswith(
        f"{tmp_path / 'far.gpkg'}: no reference polygon lies on the predicted area; check its CRS"
    )
    aoi = write_polygons(tmp_path / "aoi.gpkg", [(560, 0, 600, 400)])  # on nodata only
    assert one_line_error(exp, reference=reference, aoi=aoi) == (
        f"{aoi}: the area of interest covers no predicted pixel"
    )
    points = gpd.GeoDataFrame(geometry=shapely.points([[0, 0], [1, 1]]), crs="EPSG:3413")
    points.to_file(tmp_path / "points.gpkg")
    assert one_line_error(exp, reference=tmp_path / "points.gpkg") == (
        f"{tmp_path / 'points.gpkg'}: expected reference polygons, got 2 Point feature(s)"
    )
    assert one_line_error(exp, reference=reference, reference_layer="rts") == (
        f"{reference}: no layer 'rts'; expected one of reference"
    )
    assert one_line_error(exp, reference=reference, iou=1.5) == (
        "--iou: expected a number in (0, 1], got 1.5"
    )
    RunPaths.of(exp).region_binary("all").unlink()
    assert one_line_error(exp, reference=reference) == (
        f"{RunPaths.of(exp).region_binary('all')}: missing; run merge.py first"
    )


def test_command_line_and_deepseg_sh(tmp_path, model_dir):
    exp_path = hand_run(tmp_path, model_dir)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluate.py"),
            "-e",
            str(exp_path),
            "--reference",
            "nope.gpkg",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"deepseg: error: {tmp_path / 'nope.gpkg'}: reference file not found "
        "(check evaluate.reference or --reference)"
    ]
    exp = yaml.safe_load(exp_path.read_text())
    exp["evaluate"] = {"reference": "reference.gpkg", "iou": 0.1}  # relative to the file
    exp_path.write_text(yaml.safe_dump(exp))
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:  # use the test environment, as an activated venv would
        env["VIRTUAL_ENV"] = sys.prefix
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", str(REPO / "DeepSeg.sh"), str(exp_path), "evaluate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "=== DeepSeg: evaluate" in result.stderr and "ETA" in result.stderr
    report = json.loads(RunPaths.of(load_experiment(exp_path)).evaluation_report.read_text())
    assert [report["object"][k] for k in ("tp", "fp", "fn")] == [4, 1, 1]  # iou 0.1: C-rC too

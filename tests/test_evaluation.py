"""evaluate.py on hand-made runs whose scores are known exactly, and the calibrated threshold."""

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
from rasterio.features import rasterize, shapes

from conftest import REPO, lattice_transform, shared_file, write_experiment, write_raster
from deepseg.calibration import merge_threshold
from deepseg.config import load_experiment
from deepseg.errors import DeepSegError
from deepseg.evaluation import evaluate
from deepseg.mosaic import merge
from deepseg.outputs import RunPaths
from deepseg.pixel_scan import scan_region
from deepseg.polygons import vectorize
from deepseg.predicting import predict
from deepseg.tiling import create_tiles

COL0, ROW0 = 600_000, 1_333_000  # grid pixel of the hand-made rasters' top-left corner
TRANSFORM = lattice_transform(COL0, ROW0)
WIDTH, HEIGHT, VALID_COLS = 600, 400, 550  # columns 550..599 are nodata
# (col0, row0, col1, row1) in pixels of the hand-made rasters; one pixel is 9 m²
PREDICTED = {
    "A": (10, 10, 30, 30),  # 400 px
    "B": (100, 50, 200, 150),  # 10,000 px
    "C": (300, 300, 320, 320),  # 400 px
    "D": (400, 20, 420, 40),  # 400 px, no reference: FP
    "H": (180, 250, 290, 345),  # 10,450 px = 94,050 m²: medium, but its reference is large
}
REFERENCE = [
    (10, 10, 30, 30),  # rA = A: IoU 1                                        3,600 m²
    (120, 50, 220, 150),  # rB: 8,000 px shared with B, IoU 8,000 / 12,000  90,000 m²
    (315, 300, 335, 320),  # rC: 100 px shared with C, IoU 100 / 700: FN    3,600 m²
    (440, 200, 545, 340),  # rE: 14,700 px, no prediction: FN              132,300 m²
    (180, 250, 290, 390),  # rH: 10,450 px shared with H, IoU 10,450 / 15,400  138,600 m²
    (560, 50, 590, 80),  # rF: on nodata, not evaluated
]
# pixels: valid 550 x 400 = 220,000; predicted 21,650; reference (valid) 40,900
TP_PX, FP_PX, FN_PX = 400 + 8_000 + 100 + 10_450, 21_650 - 18_950, 40_900 - 18_950
TN_PX = 220_000 - TP_PX - FP_PX - FN_PX


def px_box(col0: int, row0: int, col1: int, row1: int) -> shapely.Polygon:
    """The map (EPSG:3413) rectangle of pixels [col0, col1) x [row0, row1)."""
    x0, y0 = TRANSFORM @ (col0, row0)
    x1, y1 = TRANSFORM @ (col1, row1)
    return shapely.box(x0, y1, x1, y0)


def write_polygons(path: Path, boxes: list, crs: str | None = "EPSG:3413", **columns) -> Path:
    frame = gpd.GeoDataFrame(columns, geometry=[px_box(*b) for b in boxes], crs="EPSG:3413")
    if crs != "EPSG:3413":
        frame = frame.to_crs(crs) if crs else frame.set_crs(None, allow_override=True)
    frame.to_file(path)
    return path


def hand_run(tmp_path: Path, model_dir: Path, prob: np.ndarray | None = None, **sections) -> Path:
    """An experiment whose merged rasters and polygons are written by hand: probability 0.9
    on PREDICTED (binary 1), 0.1 elsewhere, nodata right of VALID_COLS."""
    scene = write_raster(
        tmp_path / "scene.tif", np.ones((3, 8, 8), np.uint8), lattice_transform(COL0, ROW0)
    )
    exp_path = write_experiment(tmp_path, [scene], model_dir, **sections)
    paths = RunPaths.of(load_experiment(exp_path))
    if prob is None:
        prob = np.full((HEIGHT, WIDTH), 0.1, np.float32)
        for c0, r0, c1, r1 in PREDICTED.values():
            prob[r0:r1, c0:c1] = 0.9
    prob = prob.copy()
    prob[:, VALID_COLS:] = -1
    binary = np.where(prob >= 0.5, 1, 0).astype(np.uint8)
    binary[prob == -1] = 255
    paths.merged.mkdir(parents=True)
    write_raster(paths.region_prob("all"), prob[None], TRANSFORM, nodata=-1)
    write_raster(paths.region_binary("all"), binary[None], TRANSFORM, nodata=255)
    paths.vectors.mkdir()
    write_polygons(paths.polygons, list(PREDICTED.values()), rts_id=list(PREDICTED))
    write_polygons(tmp_path / "reference.gpkg", REFERENCE)
    return exp_path


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


def counts(section: dict) -> tuple[int, ...]:
    return tuple(section[k] for k in ("tp_px", "fp_px", "fn_px", "tn_px"))


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


def test_calibration_picks_the_best_f_beta_threshold(tmp_path, model_dir):
    # the reference rectangle rA (400 px) and rB (10,000 px) hold 0.9 on their left halves and
    # 0.6 on their right halves; 4,000 px without reference 0.7; everything else 0.1
    prob = np.full((HEIGHT, WIDTH), 0.1, np.float32)
    prob[10:30, 10:20], prob[10:30, 20:30] = 0.9, 0.6
    prob[50:150, 120:170], prob[50:150, 170:220] = 0.9, 0.6
    prob[20:60, 400:500] = 0.7
    exp_path = hand_run(tmp_path, model_dir, prob=prob, merge={"threshold": "calibrated"})
    exp = load_experiment(exp_path)
    reference = write_polygons(tmp_path / "ref.gpkg", REFERENCE[:2])
    paths = RunPaths.of(exp)
    with pytest.raises(DeepSegError, match="calibration.json does not exist; run evaluate.py"):
        merge_threshold(exp, 0.5)
    # positives 5,200 at 0.9 and 5,200 at 0.6, negatives 4,000 at 0.7 (and 0.1):
    # t in (0.1, 0.6]: tp 10,400, fp 4,000, fn 0     -> F0.5 0.765, F1 0.839
    # t in (0.6, 0.7]: tp 5,200,  fp 4,000, fn 5,200 -> F0.5 0.552, F1 0.531
    # t in (0.7, 0.9]: tp 5,200,  fp 0,     fn 5,200 -> F0.5 0.833, F1 0.667
    # the middle of the best run: F0.5 (701 + 900) // 2 = 800, F1 (101 + 600) // 2 = 350
    report = evaluate(exp, reference=reference, calibrate=True)
    calibration = json.loads(paths.calibration.read_text())
    assert calibration["threshold"] == report["pixel"]["best_threshold"]["threshold"] == 0.8
    assert (calibration["tp"], calibration["fp"], calibration["fn"]) == (5_200, 0, 5_200)
    assert calibration["f_beta"] == pytest.approx(1.25 * 5_200 / (1.25 * 5_200 + 0.25 * 5_200))
    assert merge_threshold(exp, 0.5) == 0.8
    evaluate(exp, reference=reference, calibrate=True, beta=1.0)
    assert json.loads(paths.calibration.read_text())["threshold"] == 0.35
    assert merge_threshold(exp, 0.5) == 0.35


def test_calibrated_threshold_drives_merge(tmp_path, model_dir):
    """The real stages: calibrate, merge again with `merge.threshold: calibrated`, and the new
    binary map scores exactly what the curve promised at that threshold."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(20, 235, (3, 192, 160), dtype=np.uint8)
    scene = write_raster(tmp_path / "scene.tif", pixels, lattice_transform(COL0, ROW0))
    exp_path = write_experiment(tmp_path, [scene], model_dir, merge={"threshold": 0.5})
    refs = [(0, 0, 70, 50), (90, 30, 150, 120), (10, 130, 60, 190)]
    reference = write_polygons(tmp_path / "ref.gpkg", refs)
    exp = load_experiment(exp_path)
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp)
    first = evaluate(exp, reference=reference, calibrate=True)
    best = first["pixel"]["best_threshold"]
    assert best["threshold"] != 0.5
    text = yaml.safe_load(exp_path.read_text())
    exp_path.write_text(yaml.safe_dump({**text, "merge": {"threshold": "calibrated"}}))
    exp = load_experiment(exp_path)
    merge(exp, force=True)
    vectorize(exp, force=True)
    second = evaluate(exp, reference=reference)
    assert second["binary_threshold"] == best["threshold"]
    pixel = second["pixel"]
    assert (pixel["tp_px"], pixel["fp_px"], pixel["fn_px"]) == (best["tp"], best["fp"], best["fn"])
    with rasterio.open(RunPaths.of(exp).region_prob("all")) as p:
        with rasterio.open(RunPaths.of(exp).region_binary("all")) as b:
            prob, binary = p.read(1), b.read(1)
    valid = prob != -1
    np.testing.assert_array_equal(binary[valid], prob[valid] >= best["threshold"])


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


def test_real_expert_votes_against_their_consensus(tmp_path, model_dir):
    """Real labels (Peel Plateau, 12 experts): the vote share as probability, >= 6 of 12 as
    the binary map and its 4-connected patches as predictions, against the published
    consensus polygons (at least 6 of 12): a perfect match, and calibration finds the gap
    between 5 and 6 votes."""
    votes_path = shared_file("peel/peel_expert_votes_3m_epsg3413.tif")
    labels = shared_file("peel/peel_labels_epsg3413.gpkg")
    with rasterio.open(votes_path) as src:
        votes, transform = src.read(1), src.transform
    exp_path = hand_run(tmp_path, model_dir)
    exp = load_experiment(exp_path)
    paths = RunPaths.of(exp)
    binary = (votes >= 6).astype(np.uint8)
    write_raster(paths.region_prob("all"), (votes / np.float32(12))[None], transform, nodata=-1)
    write_raster(paths.region_binary("all"), binary[None], transform, nodata=255)
    patches = [
        shapely.geometry.shape(g) for g, _ in shapes(binary, binary == 1, transform=transform)
    ]
    gpd.GeoDataFrame(
        {"rts_id": [f"p{i}" for i in range(len(patches))]}, geometry=patches, crs="EPSG:3413"
    ).to_file(paths.polygons, layer="rts_predictions")
    report = evaluate(exp, reference=labels, reference_layer="consensus_ge6of12", calibrate=True)
    consensus_px = int(binary.sum())
    assert counts(report["pixel"]) == (consensus_px, 0, 0, votes.size - consensus_px)
    assert [report["object"][k] for k in ("tp", "fp", "fn")] == [10, 0, 0]
    areas = gpd.read_file(labels, layer="consensus_ge6of12").area.to_numpy()
    by_size = {k: v["tp"] for k, v in report["by_size"].items()}
    assert (
        by_size
        == {
            "lt_0.01_km2": int((areas < 1e4).sum()),
            "0.01_to_0.1_km2": int(((areas >= 1e4) & (areas < 1e5)).sum()),
            "ge_0.1_km2": int((areas >= 1e5).sum()),
        }
        == {"lt_0.01_km2": 4, "0.01_to_0.1_km2": 5, "ge_0.1_km2": 1}
    )
    # threshold 0.41 keeps 5 votes (5/12 = 0.4167): the 5-vote pixels are false positives
    curve = report["pixel"]["pr_curve"]
    five_votes = int((votes == 5).sum())
    assert curve["precision"][41] == consensus_px / (consensus_px + five_votes)
    assert curve["precision"][42] == curve["recall"][42] == 1.0
    # every threshold in (5/12, 6/12] is perfect: k = 417 .. 500, the middle is 458
    assert json.loads(paths.calibration.read_text())["threshold"] == 0.458

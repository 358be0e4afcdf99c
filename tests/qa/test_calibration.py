"""Calibration: the best F-beta threshold, written to logs/ and used by merge."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from rasterio.features import shapes

from conftest import lattice_transform, shared_file, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.model.threshold import merge_threshold
from deepseg.qa.evaluate import evaluate
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage.paths import RunPaths
from handmade_run import COL0, HEIGHT, REFERENCE, ROW0, WIDTH, counts, hand_run, write_polygons


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
    with pytest.raises(DeepSegError, match="calibration.json does not exist: calibrating needs"):
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

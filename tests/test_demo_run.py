"""The README's demo command, run as a user runs it: every output exists and is valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box

from conftest import REPO
from deepseg.polygons import COLUMNS


def object_scores(
    predicted: gpd.GeoSeries, reference: gpd.GeoSeries, min_iou: float = 0.25
) -> tuple[float, float]:
    """Object precision and recall: a predicted polygon is a true positive when it is matched
    one-to-one (greedily, highest IoU first) to a reference polygon with IoU >= ``min_iou``."""
    pairs = []
    for i, p in enumerate(predicted):
        for j in np.flatnonzero(reference.intersects(p)):
            inter = p.intersection(reference.iloc[j]).area
            pairs.append((inter / (p.area + reference.iloc[j].area - inter), i, j))
    used_p, used_r = set(), set()
    for iou, i, j in sorted(pairs, reverse=True):
        if iou >= min_iou and i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
    return len(used_p) / max(len(predicted), 1), len(used_r) / max(len(reference), 1)


def test_object_scores_match_one_to_one() -> None:
    square = box(0, 0, 10, 10)
    reference = gpd.GeoSeries([square, box(20, 0, 30, 10), box(40, 0, 50, 10)])
    predicted = gpd.GeoSeries(
        [box(0, 0, 10, 8), box(0, 8, 10, 10), box(20, 0, 30, 10), box(60, 0, 70, 10)]
    )
    # IoU 0.8 and 0.2 with the first square (matched once), 1.0, and one false alarm
    assert object_scores(predicted, reference) == (2 / 4, 2 / 3)


def test_demo_command_produces_every_output(tmp_path: Path) -> None:
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:  # use the test environment, as an activated venv would
        env["VIRTUAL_ENV"] = sys.prefix
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", str(REPO / "DeepSeg.sh"), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "demo"
    stages = ["tiles", "predict", "merge", "vectorize"]
    starts = [result.stderr.index(f"=== DeepSeg: {s} (demo) ===") for s in stages]
    assert starts == sorted(starts)
    assert "ETA" in result.stderr
    # 3,072 x 2,560 px from grid pixel (600064, 1333248): 1,024 px chunks -1..2 by -1..2
    assert len(list((out / "tiles").glob("*.kea"))) == 16
    assert len(list((out / "predictions").glob("*.kea"))) == 16
    for name in ("all_prob.tif", "all_binary.tif"):
        is_valid, errors, _ = cog_validate(str(out / "merged" / name))
        assert is_valid, (name, errors)
        with rasterio.open(out / "merged" / name) as src:
            assert src.crs.to_epsg() == 3413 and src.res == (3.0, 3.0)
    frame = gpd.read_file(out / "vectors" / "rts_predictions.gpkg", layer="rts_predictions")
    assert set(COLUMNS) <= set(frame.columns) and frame.crs.to_epsg() == 3413
    reference = gpd.read_file(REPO / "data" / "demo" / "reference.gpkg", layer="reference")
    # the trained demo model finds the slumps, and few polygons are false alarms
    precision, recall = object_scores(frame.geometry, reference.geometry)
    assert precision >= 0.8 and recall >= 0.6, (precision, recall)
    lookalikes = gpd.read_file(REPO / "data" / "demo" / "reference.gpkg", layer="lookalikes")
    assert frame.intersects(lookalikes.union_all()).sum() <= 1
    log = json.loads((out / "logs" / "inference_log.json").read_text())
    assert [
        log["stages"][s]["status"] for s in ("create_tiles", "predict", "merge", "vectorize")
    ] == ["done"] * 4
    assert (out / "logs" / "experiment.yaml").is_file()
    assert not list(out.rglob(".*partial*"))
    # the README's evaluation command: every demo scar is scored, and nearly all are found
    result = subprocess.run(
        ["bash", str(REPO / "DeepSeg.sh"), "demo", "evaluate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "logs" / "evaluation.json").read_text())
    assert report["object"]["references"] == len(reference)
    assert report["object"]["precision"] > 0.8 and report["object"]["recall"] > 0.8
    assert report["pixel"]["f1"] > 0.9
    assert (out / "logs" / "evaluation_pr_curve.png").read_bytes()[:4] == b"\x89PNG"

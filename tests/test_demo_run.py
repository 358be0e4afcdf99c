"""The README's demo command, run as a user runs it: every output exists and is valid, the
trained demo model finds the slumps, and the printed report says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import rasterio
from rio_cogeo.cogeo import cog_validate

from conftest import REPO
from deepseg.stages.vectorize import COLUMNS


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
    stages = ["tiles", "predict", "merge", "vectorize", "evaluate"]
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
    log = json.loads((out / "logs" / "inference_log.json").read_text())
    assert {log["stages"][s]["status"] for s in [*stages[1:], "create_tiles"]} == {"done"}
    assert (out / "logs" / "experiment.yaml").is_file()
    assert not list(out.rglob(".*partial*"))

    # the trained model finds the slumps (object = one-to-one match with IoU >= 0.25) and
    # leaves the look-alikes (river bars, roads, gravel pads) alone
    reference = gpd.read_file(REPO / "data" / "demo" / "reference.gpkg", layer="reference")
    report = json.loads((out / "logs" / "evaluation.json").read_text())
    objects = report["object"]
    assert (objects["references"], objects["predictions"]) == (len(reference), len(frame))
    assert objects["precision"] >= 0.8 and objects["recall"] >= 0.7, objects
    assert report["pixel"]["precision"] > 0.95 and report["pixel"]["f1"] > 0.8
    lookalikes = gpd.read_file(REPO / "data" / "demo" / "reference.gpkg", layer="lookalikes")
    assert frame.intersects(lookalikes.union_all()).sum() <= 3

    # the report printed last: the same numbers, each stage's time, where the outputs are
    printed = result.stdout
    assert f"found:    {len(frame)} polygons" in printed
    assert (
        f"objects:  precision {objects['precision']:.3f}, recall {objects['recall']:.3f}" in printed
    )
    for stage in ("create_tiles", *stages[1:]):
        assert f"{stage} {log['stages'][stage]['seconds']:.1f} s" in printed
    assert (out / "merged" / "all_preview.png").read_bytes()[:4] == b"\x89PNG"  # the picture
    outputs = ("merged/all_prob.tif", "merged/all_preview.png", "vectors/rts_predictions.gpkg")
    for path in (*outputs, "logs/evaluation.json"):
        assert f"          {path} (" in printed

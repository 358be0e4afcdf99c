"""The README's demo command, run as a user runs it: every output exists and is valid."""

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
from deepseg.polygons import COLUMNS


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
    assert len(list((out / "tiles").glob("*.kea"))) == 12  # 2,560 x 2,048 px in 1,024 px chunks
    assert len(list((out / "predictions").glob("*.kea"))) == 12
    for name in ("all_prob.tif", "all_binary.tif"):
        is_valid, errors, _ = cog_validate(str(out / "merged" / name))
        assert is_valid, (name, errors)
        with rasterio.open(out / "merged" / name) as src:
            assert src.crs.to_epsg() == 3413 and src.res == (3.0, 3.0)
    frame = gpd.read_file(out / "vectors" / "rts_predictions.gpkg", layer="rts_predictions")
    assert set(COLUMNS) <= set(frame.columns) and frame.crs.to_epsg() == 3413
    reference = gpd.read_file(REPO / "data" / "demo" / "reference.gpkg", layer="reference")
    # the hand-set demo model flags bright bare ground: every scar floor, little else
    assert len(frame) >= len(reference) - 2
    assert frame.intersects(reference.union_all()).mean() > 0.8
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

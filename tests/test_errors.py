"""Broken inputs stop a stage with one line naming the culprit, and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, lattice_transform, write_experiment, write_raster


def run_script(script: str, experiment: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), "-e", str(experiment)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def scene(folder: Path) -> Path:
    data = np.full((3, 64, 64), 50, dtype=np.uint8)
    return write_raster(folder / "scene.tif", data, lattice_transform(640, 640))


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deepseg: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


def test_bad_experiment_key(tmp_path, model_dir):
    exp = write_experiment(
        tmp_path, [scene(tmp_path)], model_dir, inference={"scales": [1.0, "half"]}
    )
    result = run_script("create_tiles.py", exp)
    assert_one_line_error(result, str(exp), "inference.scales[1]")
    assert not (tmp_path / "out").exists()


def test_unknown_key(tmp_path, model_dir):
    exp = write_experiment(tmp_path, [scene(tmp_path)], model_dir, grid={"tile_szie": 256})
    assert_one_line_error(run_script("predict.py", exp), str(exp), "grid.tile_szie")
    assert not (tmp_path / "out").exists()


def test_missing_model_file(tmp_path, model_dir):
    (model_dir / "normalization_stats.json").unlink()
    exp = write_experiment(tmp_path, [scene(tmp_path)], model_dir)
    assert_one_line_error(
        run_script("create_tiles.py", exp), str(model_dir / "normalization_stats.json")
    )
    assert not (tmp_path / "out").exists()


def test_unreadable_raster(tmp_path, model_dir):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    exp = write_experiment(tmp_path, [scene(tmp_path), broken], model_dir)
    assert_one_line_error(run_script("create_tiles.py", exp), str(broken))
    assert not (tmp_path / "out").exists()


def test_missing_tile_stores_say_what_to_run(tmp_path, model_dir):
    exp = write_experiment(tmp_path, [scene(tmp_path)], model_dir)
    assert_one_line_error(run_script("predict.py", exp), "create_tiles.py")


def test_model_with_other_channel_count_is_refused(tmp_path, model_dir):
    exp = write_experiment(tmp_path, [scene(tmp_path)], model_dir, input={"bands": [1, 2]})
    assert run_script("create_tiles.py", exp).returncode == 0
    line = assert_one_line_error(run_script("predict.py", exp), "normalization_stats.json")
    assert "2 band(s)" in line
    assert not (tmp_path / "out" / "predictions").exists()

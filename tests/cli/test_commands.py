"""The ``deepseg`` console script: a stage that succeeds exits 0 (so ``deepseg tiles &&
deepseg predict`` goes on), a broken experiment exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, lattice_transform, write_experiment, write_raster

SCRIPT = Path(sys.executable).parent / "deepseg"


@pytest.mark.skipif(not SCRIPT.exists(), reason="deepseg is not installed in this environment")
def test_a_stage_that_succeeds_exits_0_and_a_bad_key_2(tmp_path, model_dir):
    data = np.full((3, 64, 64), 50, dtype=np.uint8)
    raster = write_raster(tmp_path / "scene.tif", data, lattice_transform(640, 640))
    exp = write_experiment(tmp_path, [raster], model_dir)
    done = subprocess.run([SCRIPT, "tiles", "-e", exp], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "{'units'" not in done.stderr  # the summary is not printed as an exit message
    assert list((tmp_path / "out" / "tiles").glob("*.kea"))
    bad = write_experiment(tmp_path / "bad", [raster], model_dir, grid={"tile_sise": 64})
    result = subprocess.run([SCRIPT, "tiles", "-e", bad], capture_output=True, text=True)
    assert_one_line_error(result, "grid.tile_sise")

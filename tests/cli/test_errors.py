"""Broken inputs stop a stage with one line naming the culprit, and leave nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    REPO,
    assert_one_line_error,
    lattice_transform,
    run_script,
    write_experiment,
    write_raster,
)
from deepseg.stores import shared_arrays
from deepseg.stores.prob_store import read_prob_attrs, read_prob_window


def scene(folder: Path) -> Path:
    data = np.full((3, 64, 64), 50, dtype=np.uint8)
    return write_raster(folder / "scene.tif", data, lattice_transform(640, 640))


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
    for script in ("create_tiles.py", "predict.py"):  # refused before staging any tile
        line = assert_one_line_error(run_script(script, exp), "normalization_stats.json")
        assert "2 band(s)" in line
    assert not (tmp_path / "out" / "tiles").exists()
    assert not (tmp_path / "out" / "predictions").exists()


def _kill_predict_then_finish(
    tmp_path: Path, model_dir: Path, size: int, **sections: dict
) -> tuple[list[int], list[Path]]:
    """Run predict, SIGKILL it once its first store is in place; check the stores under final
        names are complete; rerun predict and merge, and assert the merged rasters equal those of
        an uninterrupted run byte for byte. Returns the killed process's pid and the shared-memory
    files it had left when it was killed."""
    data = np.random.default_rng(11).integers(1, 256, size=(3, size, size), dtype=np.uint8)
    raster = write_raster(tmp_path / "big.tif", data, lattice_transform(640, 640))
    runs = {}
    for name in ("clean", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        runs[name] = write_experiment(folder, [raster], model_dir, **sections)
        assert run_script("create_tiles.py", runs[name]).returncode == 0
    stores = tmp_path / "killed" / "out" / "predictions"
    total = len(list((tmp_path / "killed" / "out" / "tiles").glob("*.kea")))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "predict.py"), "-e", str(runs["killed"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (stores.is_dir() and any(p.name[0] != "." for p in stores.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "predict ended too soon"
        time.sleep(0.002)
    children = _children_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone_by = time.monotonic() + 10  # they watch their parent every second
    while [c for c in children if Path(f"/proc/{c}").exists()]:
        assert time.monotonic() < gone_by, f"processes {children} outlived predict"
        time.sleep(0.05)
    finished = [p for p in stores.iterdir() if not p.name.startswith(".")]
    assert 0 < len(finished) < total
    for path in finished:  # complete: header, tables and every pixel readable
        attrs = read_prob_attrs(path)
        assert read_prob_window(path, attrs["box"]) is not None
    left = _shared_files_of([proc.pid, *children])
    for name in ("clean", "killed"):
        for script in ("predict.py", "merge.py"):
            result = run_script(script, runs[name])
            assert result.returncode == 0, result.stderr
    for product in ("all_prob.tif", "all_binary.tif"):
        clean = (tmp_path / "clean" / "out" / "merged" / product).read_bytes()
        assert (tmp_path / "killed" / "out" / "merged" / product).read_bytes() == clean
    assert not [p for p in stores.iterdir() if p.name.startswith(".")]
    return [proc.pid, *children], left


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; empty where there is none)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _shared_files_of(pids: list[int]) -> list[Path]:
    return sorted(
        p for pid in pids for p in shared_arrays.SHM.glob(f"{shared_arrays.PREFIX}{pid}-*")
    )


def test_killed_predict_leaves_only_complete_stores_and_resumes_identically(tmp_path, model_dir):
    """SIGKILL in the middle of predict: stores under their final names are complete, and a
    rerun finishes the run with merged rasters byte-identical to an uninterrupted run."""
    _kill_predict_then_finish(tmp_path, model_dir, 300, grid={"chunk_tiles": 1})


@pytest.mark.skipif(not shared_arrays.SHM.is_dir(), reason="no /dev/shm here")
def test_killed_predict_with_io_processes_leaves_shared_memory_the_rerun_removes(
    tmp_path, model_dir
):
    """With I/O processes the stores travel in /dev/shm (stores over 1 MB: 512 px chunks); a
    predict killed mid-run takes its I/O processes with it and leaves its files there; the
    next predict removes them."""
    grid = {"tile_size": 256, "stride": 128, "chunk_tiles": 3}
    inference = {"io_workers": 2}
    killed, left = _kill_predict_then_finish(
        tmp_path, model_dir, 1400, grid=grid, inference=inference
    )
    assert len(killed) >= 3  # predict and its 2 I/O processes (and multiprocessing's tracker)
    assert [p for p in left if f"-{killed[0]}-" in p.name]  # the main's send files
    assert not _shared_files_of(killed)


def test_tile_list_from_another_grid_is_refused(tmp_path, model_dir):
    listed = tmp_path / "tiles.csv"
    # bounds of tile (20, 20) on the production grid (512 px, stride 256), not the test grid's
    listed.write_text(
        "tile_id,minx,miny,maxx,maxy\nc000020_r000020,-3984740,4083204,-3983204,4084740\n"
    )
    exp = write_experiment(tmp_path, [scene(tmp_path)], model_dir, grid={"tile_list": str(listed)})
    line = assert_one_line_error(
        run_script("create_tiles.py", exp), f"{listed}:2", "c000020_r000020"
    )
    assert "another grid.origin, tile_size or stride" in line
    assert not (tmp_path / "out" / "tiles").exists()


def test_model_trained_on_other_data_is_refused_before_any_work(tmp_path, model_dir):
    exp = write_experiment(
        tmp_path, [scene(tmp_path)], model_dir, model={"expected_data_version": "planet-2025"}
    )
    for script in ("create_tiles.py", "predict.py"):
        line = assert_one_line_error(
            run_script(script, exp), "normalization_stats.json", "planet-2025", "test"
        )
        assert "data_version" in line
    assert not (tmp_path / "out" / "tiles").exists()

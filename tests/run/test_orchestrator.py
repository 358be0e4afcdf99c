"""The outside-orchestrator contract: N VMs each run the real scripts with
``--tile-list tiles.csv --shard I/N`` and between them cover the list exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.geo.grid import TileGrid
from deepseg.run.journal import journal_records
from deepseg.run.manifest import fold
from deepseg.storage.paths import RunPaths
from deepseg.stores.tile_store import read_tile_store

REPO = Path(__file__).resolve().parents[2]
AT = (4096 + 17, 8192 + 9)  # grid (col, row) of the raster's pixel (0, 0)
SHARDS = 2


def tile_list(folder: Path, grid: TileGrid, tiles: list[tuple[int, int]]) -> Path:
    rows = [f"{grid.tile_id(c, r)},{','.join(map(str, grid.bounds(grid.tile_box(c, r))))}"
            for c, r in tiles]  # fmt: skip
    path = folder / "tiles.csv"
    path.write_text("tile_id,minx,miny,maxx,maxy\n" + "\n".join(rows) + "\n")
    return path


def script(name: str, experiment: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / name), "-e", str(experiment), *args], check=True)


def test_shards_of_a_tile_list_cover_it_exactly_once(tmp_path, model_dir):
    data = np.random.default_rng(5).integers(1, 256, (3, 300, 420), dtype=np.uint8)
    raster = write_raster(tmp_path / "scene.tif", data, lattice_transform(*AT))
    grid_keys = {"tile_size": 64, "stride": 32, "chunk_tiles": 2}
    experiment = write_experiment(tmp_path, [raster], model_dir, grid=grid_keys)
    grid = TileGrid.from_experiment(load_experiment(experiment))
    c0, r0 = AT[0] // 32 + 1, AT[1] // 32 + 1
    listed = [(c0 + dc, r0 + dr) for dc in range(0, 11, 2) for dr in (0, 3, 6)]  # 18 tiles
    csv = tile_list(tmp_path, grid, listed)
    for i in range(SHARDS):  # one VM after another, as an orchestrator would start them
        for stage in ("create_tiles.py", "predict.py"):
            script(stage, experiment, "--tile-list", str(csv), "--shard", f"{i}/{SHARDS}")
    paths = RunPaths.of(load_experiment(experiment))
    staged = [read_tile_store(p).tiles.tile_id for p in paths.tile_stores()]
    staged_ids = sorted(t.decode() for ids in staged for t in ids)
    assert staged_ids == sorted(grid.tile_id(c, r) for c, r in listed)  # each once, no other
    predicted = fold(paths, "predict")
    assert sorted(predicted) == sorted(p.stem for p in paths.tile_stores())
    assert all(s.status == "done" and s.attempts == 1 for s in predicted.values())
    journals = sorted((paths.logs / "manifest" / "predict").glob("*.jsonl"))
    assert len(journals) == SHARDS  # one worker per VM, each with its own share
    shares = [{r["unit"] for r in journal_records(j)} for j in journals]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(predicted)

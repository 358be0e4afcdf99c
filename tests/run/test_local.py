"""``cluster.local_processes``: the CPU stages' units shared among spawned processes on this
machine give the outputs of one process, byte for byte, each process a worker of its own."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import write_experiment
from deepseg.config import load_experiment
from deepseg.run.executors.local import processes_for
from deepseg.stages.merge import merge
from deepseg.stages.predict import STAGE as PREDICT
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage.paths import RunPaths
from shared_scenes import offgrid_scene

# stage -> journals with 2 processes: one per process, no more processes than units
STAGES = {"create_tiles": 2, "merge_parts": 2, "merge": 1, "vectorize": 2}


def outputs(exp) -> dict[str, bytes]:
    root = RunPaths.of(exp).root
    files = [*root.glob("tiles/*.kea"), *root.glob("merged/*.tif"), *root.glob("vectors/*.gpkg")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(files)}


def run_all(exp) -> None:
    create_tiles(exp)
    predict(exp)
    merge(exp)
    vectorize(exp)


def test_two_processes_make_the_outputs_of_one(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("OGR_CURRENT_DATE", "2025-01-01T00:00:00Z")  # the GPKG's own timestamp
    scene, _ = offgrid_scene(tmp_path, width=700, height=1300)
    grid = {"tile_size": 128, "stride": 64, "chunk_tiles": 3}
    runs = {}
    for n in (1, 2):
        folder = tmp_path / f"p{n}"
        path = write_experiment(folder, [scene], model_dir, grid=grid, merge={"part_px": 512},
                                cluster={"local_processes": n})  # fmt: skip
        runs[n] = load_experiment(path)
        run_all(runs[n])
    one, two = outputs(runs[1]), outputs(runs[2])
    assert len(one) > 20 and list(one) == list(two)
    assert [k for k in one if one[k] != two[k]] == []
    for stage, workers in STAGES.items():
        journals = [sorted((RunPaths.of(runs[n]).logs / "manifest" / stage).glob("*.jsonl"))
                    for n in (1, 2)]  # fmt: skip
        assert (len(journals[0]), len(journals[1])) == (1, workers), stage
    again = vectorize(runs[2])  # a rerun finds every unit done
    assert again["skipped"] == again["units"]


@pytest.mark.parametrize(("setting", "units", "expected"), [(4, 10, 4), (4, 3, 3), (1, 10, 1)])
def test_gpu_stages_keep_one_process(tmp_path, model_dir, setting, units, expected):
    scene, _ = offgrid_scene(tmp_path)
    exp = load_experiment(write_experiment(tmp_path, [scene], model_dir,
                                           cluster={"local_processes": setting}))  # fmt: skip
    names = [str(i) for i in range(units)]
    cpu_stage = dataclasses.replace(PREDICT, uses_gpu=False)
    assert processes_for(cpu_stage, exp, names) == expected
    assert processes_for(dataclasses.replace(PREDICT, uses_gpu=True), exp, names) == 1

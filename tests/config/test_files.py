"""The experiment's files: ``extends`` chains, relative paths, site profiles, broken YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from config_helpers import child, error, make_base, write_tif, write_yaml
from deepseg.config import REPO_ROOT, ConfigError, load_experiment
from deepseg.config.files import resolve_experiment_path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test from tmp_path: outputs land there, files are shown relative to it."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """tmp/base.yaml: a complete experiment whose paths are relative to tmp/."""
    return make_base(tmp_path)


def test_extends_chain_merges_dicts_and_replaces_lists(tmp_path, base):
    write_yaml(
        tmp_path / "mid.yaml",
        {
            "extends": "base.yaml",
            "grid": {"tile_size": 256, "stride": 128},
            "inference": {"scales": [1.0, 0.5], "tta": "minimal"},
            "regions": {"peel": [0, 0, 10, 10]},
            "cluster": {"slurm": {"partition": "gpu", "extra_sbatch": ["--qos=a", "--qos=b"]}},
        },
    )
    leaf = write_yaml(
        tmp_path / "experiments" / "leaf.yaml",
        {
            "extends": "../mid.yaml",
            "grid": {"stride": 64},
            "inference": {"scales": [0.5]},
            "regions": {"banks": [-5, -5, 5, 5.5]},
            "cluster": {"slurm": {"extra_sbatch": ["--qos=c"], "mem_gb": 32}},
        },
    )
    exp = load_experiment(leaf)
    assert exp.name == "leaf"
    assert (exp.grid.tile_size, exp.grid.stride, exp.grid.chunk_tiles) == (256, 64, 16)
    assert (exp.inference.scales, exp.inference.tta) == ((0.5,), "minimal")
    assert exp.regions == {"peel": (0.0, 0.0, 10.0, 10.0), "banks": (-5.0, -5.0, 5.0, 5.5)}
    slurm = exp.cluster.slurm
    assert (slurm.partition, slurm.mem_gb, slurm.extra_sbatch) == ("gpu", 32, ("--qos=c",))


def test_relative_paths_resolve_against_the_file_that_sets_them(tmp_path, base):
    write_tif(tmp_path / "experiments" / "local.tif")
    write_yaml(tmp_path / "experiments" / "tiles.csv", "tile_id,minx,miny,maxx,maxy\n")
    leaf = child(
        tmp_path,
        {
            "input": {"rasters": ["local.tif", "../scenes/[ab].tif", "../scenes/a.tif"]},
            "grid": {"tile_list": "tiles.csv"},
            "output": {"path": "out/{name}/v1"},
        },
    )
    exp = load_experiment(leaf)
    scenes = tmp_path / "scenes"
    # in the order given, each glob sorted, duplicates dropped
    assert exp.input.rasters == (
        tmp_path / "experiments/local.tif",
        scenes / "a.tif",
        scenes / "b.tif",
    )
    assert exp.grid.tile_list == tmp_path / "experiments" / "tiles.csv"
    assert exp.model.dir == tmp_path / "model"  # set by base.yaml, relative to it
    assert exp.output.path == tmp_path / "out" / "demo" / "v1"  # relative to the current folder


def test_resolve_experiment_path(tmp_path):
    mine = write_yaml(tmp_path / "experiments" / "mine.yaml", {})
    assert resolve_experiment_path("mine") == mine
    assert resolve_experiment_path("experiments/mine.yaml") == mine
    assert resolve_experiment_path("demo") == REPO_ROOT / "experiments" / "demo.yaml"
    with pytest.raises(ConfigError, match="not found; looked for .*nope.yaml"):
        resolve_experiment_path("nope")


def test_extends_cycle(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"extends": "a.yaml"})
    assert (
        error(tmp_path / "a.yaml")
        == "b.yaml: extends: expected no cycle, got a.yaml -> b.yaml -> a.yaml"
    )


def test_extends_missing_parent(tmp_path):
    path = write_yaml(tmp_path / "a.yaml", {"extends": "gone.yaml"})
    assert error(path) == f"a.yaml: extends: expected an existing file, got {tmp_path}/gone.yaml"


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid:\n  tile_size: [1, 2\n", "x.yaml:3: expected valid YAML, got an error: "),
        (
            "grid: {}\ngrid: {}\n",
            "x.yaml:2: expected valid YAML, got an error: duplicate key 'grid'",
        ),
        ("- a\n- b\n", "x.yaml: expected a mapping of keys, got list"),
    ],
)
def test_broken_yaml(tmp_path, text, message):
    assert error(write_yaml(tmp_path / "x.yaml", text)).startswith(message)


def test_profile_applies_just_before_the_file_that_names_it(tmp_path, base):
    write_yaml(
        tmp_path / "site.yaml",
        {"cluster": {"executor": "slurm", "slurm": {"partition": "gpu", "time_min": 240}}},
    )
    exp = load_experiment(
        child(tmp_path, {"cluster": {"profile": "../site.yaml", "slurm": {"time_min": 30}}})
    )
    assert exp.cluster.executor == "slurm"
    assert (exp.cluster.slurm.partition, exp.cluster.slurm.time_min) == ("gpu", 30)
    assert exp.cluster.slurm.cpus_per_task == 4  # the root default, untouched by either


def test_bundled_profiles_load(tmp_path, base):
    for name in ("generic-gpu", "gcp-gpu"):
        exp = load_experiment(child(tmp_path, {"cluster": {"profile": name}}, f"x/{name}.yaml"))
        assert exp.cluster.executor == "slurm" and exp.cluster.slurm.gpus_per_node == 1


def test_profile_errors_name_the_file(tmp_path, base):
    message = error(child(tmp_path, {"cluster": {"profile": "nosuchsite"}}))
    assert message.startswith("experiments/demo.yaml: cluster.profile: expected a profile name")
    assert "generic-gpu" in message and "nosuchsite" in message
    write_yaml(tmp_path / "bad.yaml", {"cluster": {"executor": "slurm"}, "grid": {}})
    message = error(child(tmp_path, {"cluster": {"profile": "../bad.yaml"}}))
    assert message.startswith("bad.yaml: expected only a 'cluster:' mapping")
    write_yaml(tmp_path / "typo.yaml", {"cluster": {"slurm": {"partitoin": "gpu"}}})
    message = error(child(tmp_path, {"cluster": {"profile": "../typo.yaml"}}))
    assert message.startswith("typo.yaml: cluster.slurm.partitoin: unknown key")

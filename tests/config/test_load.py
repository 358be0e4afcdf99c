"""Loading experiments: defaults, the documented keys, one-line errors, evaluate and train."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from config_helpers import child, error, make_base, write_yaml
from deepseg.config import REPO_ROOT, Experiment, load_experiment


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test from tmp_path: outputs land there, files are shown relative to it."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """tmp/base.yaml: a complete experiment whose paths are relative to tmp/."""
    return make_base(tmp_path)


def test_defaults_filled_in(tmp_path, base):
    exp = load_experiment(base)
    assert exp.name == "base"
    assert exp.crs == "EPSG:3413"
    assert exp.source == tmp_path / "base.yaml"
    assert exp.output.path == tmp_path / "runs" / "base"
    assert exp.input.rasters == (tmp_path / "scenes/a.tif", tmp_path / "scenes/b.tif")
    assert (exp.input.bands, exp.input.nodata, exp.input.resampling) == (
        (1, 2, 3),
        None,
        "bilinear",
    )
    g = exp.grid
    assert (g.resolution, g.tile_size, g.stride, g.chunk_tiles) == (3.0, 512, 256, 16)
    assert (g.origin, g.tile_list) == ((-4000100.0, 4100100.0), None)
    assert exp.regions == {}
    assert exp.model.dir == tmp_path / "model"
    inf = exp.inference
    assert (inf.scales, inf.tta, inf.batch_size, inf.precision, inf.device) == (
        (1.0,),
        "none",
        16,
        "fp32",
        "auto",
    )
    assert (exp.merge.method, exp.merge.threshold) == ("max", None)
    assert (exp.vectorize.min_area_m2, exp.vectorize.simplify_m) == (0.0, 0.0)
    s = exp.cluster.slurm
    assert exp.cluster.executor == "local"
    assert (s.partition, s.account, s.time_min, s.mem_gb, s.cpus_per_task) == (
        None,
        None,
        60,
        None,
        4,
    )
    assert (s.gpus_per_node, s.array_parallelism, s.max_array_size) == (0, None, 1000)
    assert (s.extra_sbatch, s.setup) == ((), ())


def test_root_experiment_yaml_documents_the_dataclass_defaults(tmp_path, base):
    """experiment.yaml's values equal the built-in defaults, and bare it fails clearly."""
    assert error(REPO_ROOT / "experiment.yaml").endswith(
        "input.rasters: expected at least one raster file or glob, got []"
    )
    overrides = {"input": {"rasters": ["../scenes/*.tif"]}, "model": {"dir": "../model"}}
    plain = write_yaml(tmp_path / "a" / "x.yaml", overrides)
    rooted = write_yaml(
        tmp_path / "b" / "x.yaml", {"extends": str(REPO_ROOT / "experiment.yaml"), **overrides}
    )
    assert load_experiment(rooted).to_dict() == load_experiment(plain).to_dict()


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of a config dataclass, nested sections included."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("yaml", True):
            keys.add(prefix + f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                keys |= _schema_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(prefix + k)
        if isinstance(v, dict) and k != "regions":
            keys |= _yaml_keys(v, f"{prefix}{k}.")
    return keys


def test_root_experiment_yaml_lists_every_key():
    """Every key of the schema is written (and so documented) in experiment.yaml."""
    written = _yaml_keys(yaml.safe_load((REPO_ROOT / "experiment.yaml").read_text()))
    text = (REPO_ROOT / "experiment.yaml").read_text()
    assert "# name:" in text  # name defaults to the file's stem, so it is shown commented out
    missing = _schema_keys(Experiment) - written - {"name"}
    assert not missing, f"experiment.yaml does not document {sorted(missing)}"
    assert not written - _schema_keys(Experiment), "experiment.yaml has keys the schema lacks"


def test_name_is_substituted_into_output_path(tmp_path, base):
    exp = load_experiment(child(tmp_path, {"name": "yukon-2025", "output": {"path": "/r/{name}"}}))
    assert (exp.name, exp.output.path) == ("yukon-2025", Path("/r/yukon-2025"))


def test_to_dict_is_plain_yaml_that_reloads_to_the_same_experiment(tmp_path, base):
    exp = load_experiment(
        child(tmp_path, {"regions": {"a": [0, 0, 1, 1]}, "vectorize": {"min_area_m2": 1e3}})
    )
    assert exp.vectorize.min_area_m2 == 1000.0
    data = exp.to_dict()
    assert data["input"]["rasters"] == [str(p) for p in exp.input.rasters]
    assert data["regions"] == {"a": [0.0, 0.0, 1.0, 1.0]}
    again = load_experiment(write_yaml(tmp_path / "dump" / "demo.yaml", yaml.safe_dump(data)))
    assert again.to_dict() == data
    assert isinstance(again, Experiment) and again.source == tmp_path / "dump" / "demo.yaml"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"inference": {"scales": [1.0, "half"]}},
            "inference.scales[1]: expected a number in (0, 1], got 'half'",
        ),
        (
            {"cluster": {"slurm": {"partiton": "gpu"}}},
            "cluster.slurm.partiton: unknown key, expected one of partition, account,",
        ),
        ({"grid": {"tile_size": True}}, "grid.tile_size: expected an integer >= 1, got true"),
        (
            {"grid": {"origin": [1, 2, 3]}},
            "grid.origin: expected a list of 2 numbers, got [1, 2, 3]",
        ),
        (
            {"merge": {"threshold": 1.5}},
            "merge.threshold: expected a number in [0, 1] or calibrated or null, got 1.5",
        ),
        (
            {"inference": {"tta": "full"}},
            "inference.tta: expected one of none|minimal|standard, got 'full'",
        ),
        (
            {"inference": {"scales": []}},
            "inference.scales: expected a list of 1 to 7 numbers in (0, 1]",
        ),
        (  # a scale-hit bit each: with 8, all hit would read as the scales product's nodata
            {"inference": {"scales": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]}},
            "inference.scales: expected a list of 1 to 7 numbers in (0, 1] (a scale-hit bit",
        ),
        ({"input": {"bands": [1, 0]}}, "input.bands[1]: expected an integer >= 1, got 0"),
        (
            {"input": {"rasters": ["nope.tif"]}},
            "input.rasters[0]: expected an existing raster file, got '",
        ),
        (
            {"input": {"rasters": ["*.jp2"]}},
            "input.rasters[0]: expected a glob matching at least one file",
        ),
        (
            {"crs": "EPSG:99999"},
            "crs: expected a CRS pyproj reads (e.g. EPSG:3413), got 'EPSG:99999'",
        ),
        (
            {"regions": {"bad name": [0, 0, 1, 1]}},
            "regions.bad name: expected a region name matching",
        ),
        (
            {"regions": {False: [0, 0, 1, 1]}},  # what YAML makes of a bare `off:`
            "regions.False: a name YAML reads as true/false (on, off, yes, no, ...): write it "
            "in quotes",
        ),
        (
            {"regions": {"flat": [0, 5, 1, 5]}},
            "regions.flat: expected [minx, miny, maxx, maxy] with",
        ),
        (
            {"grid": {"stride": 600}},
            "grid.stride: expected grid.stride <= grid.tile_size, got 600 > 512",
        ),
        (
            {"grid": {"tile_list": "tiles.csv"}},
            "grid.tile_list: expected an existing CSV file, got ",
        ),
        (
            {"output": {"path": "gs://Bad_Bucket/x"}},
            "output.path: expected a gs://bucket/path URI, got 'gs://Bad_Bucket/x': bucket name "
            "'Bad_Bucket' is not valid (3-222 characters: a-z 0-9 . _ -)",
        ),
        (
            {"input": {"cache_dir": "gs://bucket/cache"}},
            "input.cache_dir: must be a local folder (it is where gs:// files are kept on this "
            "machine), got 'gs://bucket/cache'",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, base, data, message):
    assert error(child(tmp_path, data)).startswith(f"experiments/demo.yaml: {message}")


def test_error_names_the_ancestor_that_set_the_key(tmp_path, base):
    write_yaml(tmp_path / "mid.yaml", {"extends": "base.yaml", "grid": {"tile_size": 128}})
    leaf = write_yaml(tmp_path / "experiments" / "leaf.yaml", {"extends": "../mid.yaml"})
    # stride (default 256) is nowhere set: the file that set tile_size is at fault
    assert (
        error(leaf)
        == "mid.yaml: grid.tile_size: expected grid.stride <= grid.tile_size, got 256 > 128"
    )
    write_yaml(tmp_path / "mid.yaml", {"extends": "base.yaml", "input": {"rasters": ["x/*.tif"]}})
    assert error(leaf) == (
        f"mid.yaml: input.rasters[0]: expected a glob matching at least one file, "
        f"got '{tmp_path}/x/*.tif'"
    )


def test_missing_model_file_is_named(tmp_path, base):
    (tmp_path / "model" / "best_model.pth").unlink()
    assert error(base) == (
        "base.yaml: model.dir: expected a model folder holding best_model.pth, "
        f"missing {tmp_path}/model/best_model.pth"
    )
    assert error(child(tmp_path, {"model": {"dir": None}})).startswith(
        "experiments/demo.yaml: model.dir: expected a model folder (best_model.pth,"
    )


def test_required_key_missing(tmp_path):
    path = write_yaml(tmp_path / "x.yaml", {"model": {"dir": "."}})
    assert error(path) == (
        "x.yaml: input.rasters: expected at least one raster file or glob, "
        "got nothing (the key is required)"
    )


def test_evaluate_section(tmp_path, base):
    exp = load_experiment(base)
    assert (exp.evaluate.reference, exp.evaluate.aoi, exp.evaluate.reference_layer) == (None,) * 3
    assert (exp.evaluate.iou, exp.evaluate.beta) == (0.25, 0.5)
    leaf = child(
        tmp_path,
        {
            "evaluate": {"reference": "../labels/ref.gpkg", "aoi": "aoi.geojson", "iou": 0.5},
            "merge": {"threshold": "calibrated"},
        },
    )
    exp = load_experiment(leaf)
    # relative to the file that set them; not checked to exist (evaluate.py may override them)
    assert exp.evaluate.reference == tmp_path / "labels" / "ref.gpkg"
    assert exp.evaluate.aoi == tmp_path / "experiments" / "aoi.geojson"
    assert (exp.evaluate.iou, exp.merge.threshold) == (0.5, "calibrated")
    assert error(child(tmp_path, {"evaluate": {"iou": 0}})).startswith(
        "experiments/demo.yaml: evaluate.iou: expected a number in (0, 1], got 0"
    )
    assert error(child(tmp_path, {"merge": {"threshold": "calibrate"}})) == (
        "experiments/demo.yaml: merge.threshold: expected a number in [0, 1] or calibrated "
        "or null, got 'calibrate'"
    )


def test_train_section_defaults_and_paths(tmp_path, base):
    t = load_experiment(base).train
    assert t.output == tmp_path / "runs" / "base" / "model"  # {output.path}/model
    assert (t.seed, t.scenes, t.scene_size, t.scene_seed) == (0, 16, 1024, 1000)
    assert (t.validation_seed, t.validation_size, t.crop_size, t.batch_size) == (999, 1536, 256, 8)
    assert (t.steps, t.learning_rate, t.validate_every) == (800, 0.003, 200)
    assert (t.base_channels, t.depth, t.device) == (8, 4, "auto")
    leaf = child(tmp_path, {"train": {"output": "models/v1"}})
    assert load_experiment(leaf).train.output == tmp_path / "experiments" / "models" / "v1"


def test_training_does_not_need_the_inputs(tmp_path):
    """train.py reads neither input.rasters nor model.dir: they may not exist yet."""
    path = write_yaml(
        tmp_path / "x.yaml", {"input": {"rasters": ["a/*.tif"]}, "model": {"dir": "m"}}
    )
    assert "input.rasters[0]: expected a glob matching" in error(path)
    exp = load_experiment(path, check_inputs=False)
    assert (exp.input.rasters, exp.model.dir) == ((tmp_path / "a/*.tif",), tmp_path / "m")

"""Shared fixtures: small real GeoTIFFs, model folders and experiment files made per test."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine

pytest_plugins = ["slurm_cluster"]  # the session fixture `slurm_cluster`: a real one-node Slurm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ORIGIN = (-4000100.0, 4100100.0)
RES = 3.0
MEAN = [100.0, 110.0, 120.0]
STD = [50.0, 40.0, 30.0]


def shared_file(relative: str) -> Path:
    """A file from ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside this checkout)")
    return path


def lattice_transform(col: int, row: int, res: float = RES) -> Affine:
    """Transform of a raster whose pixel (0, 0) is grid pixel (col, row) of the EPSG:3413 grid."""
    return Affine(res, 0, ORIGIN[0] + col * res, 0, -res, ORIGIN[1] - row * res)


def write_raster(
    path: Path,
    data: np.ndarray,
    transform: Affine,
    crs: str = "EPSG:3413",
    nodata: float | None = 0,
) -> Path:
    """Write a (bands, rows, cols) array as a tiled GeoTIFF."""
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


class Pointwise(torch.nn.Module):
    """Each output logit depends only on the same input pixel (elementwise ops only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0:1] * 1.5 - x[:, 1:2] * 0.5 + x[:, 2:3] * 0.25 + 0.1) * 2.0


class Poisoned(torch.nn.Module):
    """The pointwise test model, but raises where band 1 holds the poison value 255."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > (254.5 - 100.0) / 50.0).any()):
            raise RuntimeError("poisoned pixel")
        return (x[:, 0:1] * 1.5 - x[:, 1:2] * 0.5 + x[:, 2:3] * 0.25 + 0.1) * 2.0


def write_model(
    folder: Path,
    network: torch.nn.Module | None = None,
    threshold: float = 0.5,
    mean: list[float] = MEAN,
    std: list[float] = STD,
) -> Path:
    """A model folder (TorchScript) in the deployment layout."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(network or Pointwise()), str(folder / "best_model.pth"))
    (folder / "normalization_stats.json").write_text(
        json.dumps({"mean": mean, "std": std, "data_version": "test"})
    )
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {"framework": "torchscript", "threshold": threshold, "model_version": "test-pointwise"}
        )
    )
    return folder


def reference_probability(
    pixels: np.ndarray, valid: np.ndarray, network: torch.nn.Module | None = None
) -> np.ndarray:
    """The model applied to a whole image at once; nodata -1 where the input is invalid."""
    x = torch.from_numpy(pixels.astype(np.float32))
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    x = torch.where(torch.from_numpy(valid)[None], x, torch.zeros(()))
    with torch.inference_mode():
        prob = torch.sigmoid(torch.jit.script(network or Pointwise())(x[None]))[0, 0].numpy()
    return np.where(valid, prob, -1.0).astype(np.float32)


def assert_same_probability(actual: np.ndarray, expected: np.ndarray) -> None:
    """Probability rasters equal pixel for pixel: the same nodata (-1) pixels, and the same
    values up to 2 float32 ULP. The ULPs are not geometry: torch computes the last elements of
    a tensor in a scalar tail loop, and its scalar and SIMD sigmoids are each within 1 ULP of
    the true value, on either side (e.g. sigmoid(-2.24) = 0.09621556161 comes out as
    0.09621556848 scalar and 0.09621555358 SIMD). A pixel in the whole image's tail is not in
    a tile's. A geometry error (a shifted, dropped or doubled pixel) changes far more."""
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual == -1, expected == -1)
    np.testing.assert_array_max_ulp(actual, expected, maxulp=2)


def write_experiment(folder: Path, rasters: list[Path], model_dir: Path, **sections: dict) -> Path:
    """An experiment file with small tiles for fast tests; ``sections`` override keys."""
    exp = {
        "name": "test",
        "output": {"path": str(folder / "out")},
        "input": {"rasters": [str(r) for r in rasters]},
        "grid": {"tile_size": 64, "stride": 32, "chunk_tiles": 2},
        "model": {"dir": str(model_dir)},
        "inference": {"batch_size": 7, "device": "cpu"},
    }
    for key, value in sections.items():
        exp[key] = {**exp.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


@pytest.fixture(autouse=True)
def stage_logging_ends_with_the_test() -> Iterator[None]:
    """A stage run in-process (``cli.commands.run_command``) points the root logger at the
    stderr pytest captured for that test; drop it, so later tests do not log to a closed stream."""
    yield
    for handler in logging.root.handlers[:]:
        if type(handler) is logging.StreamHandler:
            logging.root.removeHandler(handler)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model")


def run_script(script: str, experiment: Path) -> subprocess.CompletedProcess:
    """Run a top-level stage script on an experiment, as a user would."""
    return subprocess.run(
        [sys.executable, str(REPO / script), "-e", str(experiment)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """The run failed with exit 2 and one `deepseg: error:` line naming each of ``names``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deepseg: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``tests/run.sh`` runs 2 processes), one process takes each test
    file whole (its module fixtures are made once) and every real-Slurm test (one cluster);
    those go first, being the longest chain (installing and starting Slurm included)."""
    for item in items:
        group = "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly where xdist no longer groups (pytest 9.2 broke it silently: two processes
    would then each start Slurm, one waiting on the other's lock for 10 min, then skip)."""
    if session.config.getoption("dist", "no") == "loadgroup" and session.config.option.numprocesses:
        return  # the controller: the workers' ids are checked in the workers
    if getattr(session.config.option, "loadgroup", False):  # an xdist worker of loadgroup
        ungrouped = [i.nodeid for i in session.items if "@" not in i.nodeid.rsplit("]", 1)[-1]]
        if ungrouped:
            raise pytest.UsageError(
                f"pytest-xdist did not group {ungrouped[0]} (pytest {pytest.__version__}): "
                "use the pytest the dev extra pins, or DEEPSEG_TEST_PROCESSES=0"
            )

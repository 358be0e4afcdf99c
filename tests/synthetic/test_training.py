"""train.py: threshold calibration, augmentation, the validation predictor, a tiny run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, Pointwise, assert_same_probability, reference_probability, write_model
from deepseg.config import ConfigError, GridConfig, load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.model.loading import load_model
from deepseg.synthetic.scenes import render_scene
from deepseg.synthetic.training import calibrate_threshold, predict_scene, train
from deepseg.synthetic.training_data import TRAIN_ROADS, augment

TINY = {
    "scenes": 2,
    "scene_size": 384,
    "validation_size": 256,
    "crop_size": 64,
    "batch_size": 2,
    "steps": 4,
    "validate_every": 2,
    "base_channels": 4,
    "depth": 2,
    "device": "cpu",
}


def test_calibration_picks_the_f05_best_threshold() -> None:
    """Slump pixels at 0.9, 0.8, 0.6, 0.3; background at 0.7, 0.65, 0.2, 0.1. Above 0.7 up to
    0.8 two slump pixels and no false alarm: precision 1, recall 0.5, F0.5 = 0.625 / 0.75;
    thresholds 0.701 .. 0.800 all reach it and the middle one, 0.75, is chosen."""
    prob = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.65, 0.2, 0.1])
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    cal = calibrate_threshold(prob, truth, 0.5)
    assert (cal.threshold, cal.precision, cal.recall) == (0.75, 1.0, 0.5)
    assert cal.fbeta == pytest.approx(0.625 / 0.75)
    # F1 weighs recall as much as precision: every slump pixel, two false alarms (F1 = 0.8)
    f1 = calibrate_threshold(prob, truth, beta=1.0)
    assert (f1.threshold, f1.fbeta) == (0.25, pytest.approx(0.8))


def test_calibration_equals_a_brute_force_search() -> None:
    rng = np.random.default_rng(5)
    truth = rng.random(5000) < 0.2
    prob = np.clip(rng.normal(np.where(truth, 0.65, 0.35), 0.2), 0, 1).astype(np.float32)
    candidates = np.arange(1001) / 1000

    def f05(t: float) -> float:
        tp, fp = np.sum((prob >= t) & truth), np.sum((prob >= t) & ~truth)
        return 1.25 * tp / (1.25 * tp + 0.25 * np.sum((prob < t) & truth) + fp)

    best = max(f05(np.float32(t)) for t in candidates)
    cal = calibrate_threshold(prob, truth, 0.5)
    assert cal.fbeta == pytest.approx(best) and f05(np.float32(cal.threshold)) == cal.fbeta


def test_augment_moves_truth_with_pixels_and_keeps_nodata() -> None:
    pixels = np.full((3, 32, 32), 60, dtype=np.uint8)
    pixels[:, 4:10, 20:30] = 200  # the "slump"
    pixels[:, 28:, :] = 0  # nodata rows
    truth = np.zeros((32, 32), dtype=bool)
    truth[4:10, 20:30] = True
    valid = pixels.any(axis=0)
    dihedral = [
        lambda a, k=k, f=f: np.rot90(a, k)[:, ::-1] if f else np.rot90(a, k)
        for k in range(4)
        for f in (False, True)
    ]
    seen = set()
    for seed in range(24):
        x, t = augment(np.random.default_rng(seed), pixels, truth)
        assert x.dtype == np.float32 and x.shape == (3, 32, 32)
        assert np.array_equal(x.mean(axis=0) > 130, t)  # the bright square is the truth
        match = [i for i, d in enumerate(dihedral) if np.array_equal(d(truth), t)]
        assert len(match) == 1 and np.array_equal(dihedral[match[0]](valid), x.any(axis=0))
        assert x[:, x.any(axis=0)].min() >= 1  # valid pixels never become nodata
        seen.add(match[0])
    assert len(seen) == 8


def test_predict_scene_covers_every_pixel_as_predict_does(tmp_path: Path) -> None:
    """With a pointwise model every tile agrees, so the max-merged tiles equal the model on
    the whole image: no pixel is missed, shifted or normalized differently (300 px is not a
    multiple of the stride, so the last tile is flush with the edge)."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(1, 256, (3, 300, 260), dtype=np.uint8)
    pixels[:, 250:, 200:] = 0
    valid = pixels.any(axis=0)
    model = load_model(write_model(tmp_path / "m"), bands=3, device="cpu")
    demo = load_experiment("demo", check_inputs=False)
    expected = reference_probability(pixels, valid, Pointwise())
    for method in ("max", "sinusoidal"):  # merge.method is predict's: both agree pointwise
        merge = dataclasses.replace(demo.merge, method=method)
        exp = dataclasses.replace(demo, grid=GridConfig(tile_size=64, stride=32), merge=merge)
        prob = predict_scene(model, pixels, exp, batch_size=5)
        assert (prob[~valid] == -1).all()
        if method == "max":
            assert_same_probability(prob, expected)
        else:  # a weighted mean of equal values: equal to float32 rounding
            np.testing.assert_allclose(prob[valid], expected[valid], rtol=0, atol=1e-6)


def test_predict_scene_uses_the_experiments_scales_like_predict(tmp_path: Path) -> None:
    """Two scales fuse by maximum: the scene's map is the max of its one-scale maps, and the
    0.5 scale (context 2 x the tile, read through the scene's nodata edge) differs from 1.0."""
    pixels = np.random.default_rng(3).integers(1, 256, (3, 160, 130), dtype=np.uint8)
    model = load_model(write_model(tmp_path / "m"), bands=3, device="cpu")
    demo = load_experiment("demo", check_inputs=False)
    grid = GridConfig(tile_size=32, stride=16)

    def scene_map(scales: tuple[float, ...]) -> np.ndarray:
        inference = dataclasses.replace(demo.inference, scales=scales)
        exp = dataclasses.replace(demo, grid=grid, inference=inference)
        return predict_scene(model, pixels, exp, batch_size=7)

    one, half, both = scene_map((1.0,)), scene_map((0.5,)), scene_map((1.0, 0.5))
    assert np.array_equal(both, np.maximum(one, half)) and not np.array_equal(one, half)


def write_training_experiment(folder: Path, **train: object) -> Path:
    """An experiment for train.py whose input raster and model folder do not exist."""
    path = folder / "train.yaml"
    exp = {
        "output": {"path": str(folder / "out")},
        "input": {"rasters": ["not-made-yet.tif"]},
        "model": {"dir": "model-to-train"},
        "grid": {"tile_size": 64, "stride": 64},
        "train": {**TINY, **train},
    }
    path.write_text(yaml.safe_dump(exp))
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny networks run faster on one thread, and the byte comparison needs the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_py_writes_a_loadable_model_folder(tmp_path: Path, one_thread: None) -> None:
    experiment = write_training_experiment(tmp_path)
    command = [sys.executable, str(REPO / "train.py"), "-e", str(experiment)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ETA" in result.stderr and "validation F0.5" in result.stderr
    folder = tmp_path / "out" / "model"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]  # no partials
    model = load_model(folder, bands=3, device="cpu")
    assert model.framework == "deepseg-unet" and 0 <= model.threshold <= 1
    with torch.inference_mode():
        assert model.network(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (config["base_channels"], config["depth"]) == (4, 2)
    assert config["training"]["best_step"] in (2, 4)
    # the statistics are those of the training scenes' valid pixels, computed here again
    scenes = [
        render_scene(384, 384, 1000 + i, giants=i % 2, roads=TRAIN_ROADS).pixels for i in range(2)
    ]
    values = np.concatenate([s[:, s.any(axis=0)] for s in scenes], axis=1).astype(np.float64)
    stats = json.loads((folder / "normalization_stats.json").read_text())
    np.testing.assert_allclose(stats["mean"], values.mean(axis=1), atol=1e-3)
    np.testing.assert_allclose(stats["std"], values.std(axis=1), atol=1e-3)

    # an existing model folder is replaced only when asked, and the same seeds give the same bytes
    exp = load_experiment(experiment, check_inputs=False)
    with pytest.raises(DeepSegError, match=r"model folder exists; pass --force"):
        train(exp)
    train(exp, force=True, output=tmp_path / "again")
    for name in ("best_model.pth", "normalization_stats.json", "config.yaml"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


def test_training_never_uses_the_demo_scene(tmp_path: Path) -> None:
    exp = load_experiment(write_training_experiment(tmp_path, scene_seed=6), check_inputs=False)
    with pytest.raises(DeepSegError, match=r"train.scene_seed: training scenes 6..7 would include"):
        train(exp)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"crop_size": 66}, "train.crop_size: expected a multiple of 2**train.depth = 4"),
        ({"validation_size": 32}, "train.validation_size: expected >= grid.tile_size (64)"),
        ({"validation_seed": 1001}, "train.validation_seed: expected a seed outside"),
    ],
)
def test_train_section_errors(tmp_path: Path, train: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(write_training_experiment(tmp_path, **train), check_inputs=False)

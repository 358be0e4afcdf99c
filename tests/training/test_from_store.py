"""train.py on a training store: held-out folds, exact augmentation, a usable model folder,
and a killed run that resumes to the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_store import store_experiment

from conftest import REPO
from deepseg.model.inference import probabilities
from deepseg.model.loading import load_model
from deepseg.training import store_data
from deepseg.training.from_store import train_from_store
from deepseg.training.scoring import class_calibration, class_loss
from deepseg.training.store_data import StoreData, dihedral, split_folds


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return store_experiment(tmp_path_factory.mktemp("store"))


def test_no_training_tile_overlaps_a_validation_tile(exp):
    data = StoreData(exp.train.store, 0)
    col0, row0 = data.file["tiles"]["col0"][()], data.file["tiles"]["row0"][()]
    t = data.tile_size
    for i in data.split.train:
        apart = (np.abs(col0[data.split.validate] - col0[i]) >= t) | (
            np.abs(row0[data.split.validate] - row0[i]) >= t
        )
        assert apart.all()
    assert len(data.split.train) > 5 and len(data.split.validate) > 5
    data.close()


def test_some_crops_end_in_a_nodata_strip_along_one_side(exp):
    data = StoreData(exp.train.store, 0)
    stats = np.zeros(3), np.ones(3)
    x, _, weight = data.batch(np.random.default_rng(0), 200, 32, *stats)
    data.close()
    off = weight[:, 0] == 0  # the store's tiles hold data everywhere: only strips are off
    with_strip = off.any(axis=(1, 2))
    assert 0.2 < with_strip.float().mean() < 0.4  # NODATA_EDGE_SHARE of the crops
    for crop, w in zip(off[with_strip], with_strip.nonzero()[:, 0], strict=True):
        rows, cols = crop.any(dim=1), crop.any(dim=0)
        full_rows, full_cols = crop.all(dim=1), crop.all(dim=0)
        # a strip: whole rows at the top or bottom, or whole columns at the left or right
        assert bool((rows == full_rows).all()) or bool((cols == full_cols).all())
        assert bool(crop[0].all() or crop[-1].all() or crop[:, 0].all() or crop[:, -1].all())
        assert crop.sum() <= 16 * 32  # at most half the crop
        assert bool((x[w][:, crop] == 0).all())  # fed as predict feeds nodata


def test_split_keeps_every_tile_that_overlaps_no_validation_tile():
    col0, row0 = np.array([0, 32, 64, 96, 160]), np.zeros(5, int)
    split = split_folds(col0, row0, np.array([0, 1, 1, 1, 1]), held=0, t=64)
    assert split.validate.tolist() == [0] and split.train.tolist() == [2, 3, 4]


def test_the_eight_turns_move_pixels_and_labels_together():
    image = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    seen = set()
    for turn in range(8):
        turned = dihedral(image, turn)
        assert sorted(turned.ravel()) == sorted(image.ravel())  # a permutation, no resampling
        np.testing.assert_array_equal(turned[1] - turned[0], 16)  # bands stay aligned
        seen.add(turned[0].tobytes())
    assert len(seen) == 8


def test_the_model_folder_loads_and_a_killed_run_resumes_to_the_same_weights(
    exp, tmp_path, monkeypatch
):
    whole = train_from_store(exp, output=tmp_path / "whole")
    model = load_model(tmp_path / "whole", bands=3, device="cpu")
    assert model.card.threshold == pytest.approx(whole["threshold"])
    assert (tmp_path / "whole" / "training_curves.png").stat().st_size > 1000
    assert len((tmp_path / "whole" / "training_log.jsonl").read_text().splitlines()) == 3

    calls = {"n": 0}
    batch = store_data.StoreData.batch

    def killed_at_step_5(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(store_data.StoreData, "batch", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_from_store(exp, output=tmp_path / "resumed")
    assert (tmp_path / ".resumed.training" / "checkpoint.pt").is_file()
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(store_data.StoreData, "batch", batch)
    again = train_from_store(exp, output=tmp_path / "resumed")
    assert again == whole
    a = torch.load(tmp_path / "whole" / "best_model.pth")
    b = torch.load(tmp_path / "resumed" / "best_model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".resumed.training").exists()


def test_train_py_killed_by_sigkill_resumes_to_the_same_weights(tmp_path_factory):
    """train.py as a user runs it, killed (SIGKILL) once its first checkpoint is on disk."""
    folder = tmp_path_factory.mktemp("killed")
    exp = store_experiment(folder, steps=80, validate_every=10)

    def train_py(output: Path) -> subprocess.Popen:
        command = [sys.executable, str(REPO / "train.py"), "-e", str(exp.source), "--output",
                   str(output)]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    whole = train_py(folder / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    checkpoint = folder / ".resumed.training" / "checkpoint.pt"
    killed = train_py(folder / "resumed")
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished
    assert checkpoint.is_file() and not (folder / "resumed").exists()
    again = train_py(folder / "resumed")
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    assert "resuming at step" in again.stderr.read().decode()
    a = torch.load(folder / "whole" / "best_model.pth")
    b = torch.load(folder / "resumed" / "best_model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(folder / f / "training_log.jsonl").read_text() for f in ("whole", "resumed")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 8


def test_a_store_of_two_classes_trains_a_model_that_predict_reads_as_three_classes(
    tmp_path_factory,
):
    folder = tmp_path_factory.mktemp("classes")
    exp = store_experiment(folder, class_column="kind", steps=4)
    assert StoreData(exp.train.store, 0).classes == ("green", "red")
    result = train_from_store(exp, output=folder / "model")
    model = load_model(folder / "model", bands=3, device="cpu")
    assert model.classes == 3
    assert model.card.class_table.names == ("background", "green", "red")
    rows = [
        json.loads(r) for r in (folder / "model" / "training_log.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["threshold"] == 0.5 and 0 <= result["fbeta"] <= 1
    x = torch.zeros(1, 3, 64, 64)
    assert probabilities(model, x, "fp32").shape == (1, 3, 64, 64)  # all K probabilities


def test_the_class_loss_leaves_out_weight_0_and_is_least_for_the_truth():
    target = torch.tensor([[[[0, 1], [2, 1]]]])
    weight = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    right = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 20
    wrong = right.roll(1, dims=1)
    assert class_loss(right, target, weight) < 0.01 < class_loss(wrong, target, weight)
    changed = right.clone()
    changed[0, :, 1, 1] = torch.tensor([20.0, 0, 0])  # the weight-0 pixel: no change
    assert class_loss(changed, target, weight) == class_loss(right, target, weight)


def test_class_calibration_is_the_macro_score_of_the_labelled_classes():
    matrix = np.array([[50, 5, 0], [10, 30, 10], [0, 0, 20]])  # rows: label
    cal = class_calibration(matrix, beta=1.0)
    p = np.array([30 / 35, 20 / 30])
    r = np.array([30 / 50, 20 / 20])
    assert cal.precision == pytest.approx(p.mean()) and cal.recall == pytest.approx(r.mean())
    assert cal.fbeta == pytest.approx((2 * p * r / (p + r)).mean())

"""crossval.py: every fold trained and scored on its held-out tiles, counts pooled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from training_store import store_experiment

from deepseg.storage.paths import RunPaths
from deepseg.training.crossval import crossval
from deepseg.training.store_data import StoreData


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp = store_experiment(tmp_path_factory.mktemp("crossval"), steps=4)
    return exp, crossval(exp)


def held_out_truth(exp, fold: int, box) -> tuple[np.ndarray, np.ndarray]:
    """The fold's labels mosaicked over ``box`` (rows, cols from the error raster): scored
    pixels and positives, straight from the store."""
    data = StoreData(exp.train.store, fold)
    t, index = data.tile_size, data.split.validate
    _, labels = data.tiles(index)
    col0, row0 = (data.file["tiles"][k][()][index] for k in ("col0", "row0"))
    scored = np.zeros(box[2:], bool)
    truth = np.zeros(box[2:], bool)
    for lab, c, r in zip(labels, col0 - box[0], row0 - box[1], strict=True):
        scored[r : r + t, c : c + t] |= lab != 255
        truth[r : r + t, c : c + t] |= (lab >= 1) & (lab != 255)
    data.close()
    return scored, truth


def test_each_fold_scores_its_held_out_pixels(run):
    exp, summary = run
    assert summary["done"] == 2 and summary["failed"] == []
    root = RunPaths.of(exp).root / "crossval"
    res, (ox, oy) = exp.grid.resolution, exp.grid.origin
    for k in range(2):
        metrics = json.loads((root / f"fold{k}" / "metrics.json").read_text())
        path = root / f"fold{k}" / "errors.tif"
        assert cog_validate(str(path))[0]
        with rasterio.open(path) as src:
            errors, t = src.read(1), src.transform
        col0, row0 = round((t.c - ox) / res), round((oy - t.f) / res)
        scored, truth = held_out_truth(exp, k, (col0, row0, *errors.shape))
        np.testing.assert_array_equal(errors != 255, scored)
        np.testing.assert_array_equal(np.isin(errors, (2, 3)), truth)  # FN + TP = the labels
        for name, value in (("tn", 0), ("fp", 1), ("fn", 2), ("tp", 3)):
            assert metrics[name] == (errors == value).sum()
        assert metrics["tp"] + metrics["fn"] > 0


def test_the_report_pools_the_folds_and_a_rerun_skips_them(run):
    exp, _ = run
    report = json.loads((RunPaths.of(exp).root / "crossval" / "report.json").read_text())
    for key in ("tp", "fp", "fn", "tn"):
        assert report["pooled"][key] == sum(f[key] for f in report["folds"])
    tp, fp, fn = (report["pooled"][k] for k in ("tp", "fp", "fn"))
    assert report["pooled"]["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert crossval(exp)["skipped"] == 2


def held_out_labels(exp, fold: int, box) -> np.ndarray:
    """The fold's labels (255 where no tile reaches or no data) mosaicked over ``box``."""
    data = StoreData(exp.train.store, fold)
    t, index = data.tile_size, data.split.validate
    _, labels = data.tiles(index)
    col0, row0 = (data.file["tiles"][k][()][index] for k in ("col0", "row0"))
    out = np.full(box[2:], 255, np.uint8)
    for lab, c, r in zip(labels, col0 - box[0], row0 - box[1], strict=True):
        np.minimum(out[r : r + t, c : c + t], lab, out=out[r : r + t, c : c + t])
    data.close()
    return out


def test_a_store_of_two_classes_is_cross_validated_per_class(tmp_path_factory):
    exp = store_experiment(tmp_path_factory.mktemp("classes"), steps=4, class_column="kind")
    assert crossval(exp)["done"] == 2
    root = RunPaths.of(exp).root / "crossval"
    res, (ox, oy) = exp.grid.resolution, exp.grid.origin
    matrices = []
    for k in range(2):
        metrics = json.loads((root / f"fold{k}" / "metrics.json").read_text())
        with rasterio.open(root / f"fold{k}" / "errors.tif") as src:
            pairs, t = src.read(1), src.transform
        col0, row0 = round((t.c - ox) / res), round((oy - t.f) / res)
        labels = held_out_labels(exp, k, (col0, row0, *pairs.shape))
        scored = pairs != 255
        np.testing.assert_array_equal(scored, labels != 255)
        np.testing.assert_array_equal(pairs[scored] // 3, labels[scored])  # label * K + class
        matrix = np.bincount(pairs[scored], minlength=9).reshape(3, 3)
        assert metrics["confusion_matrix"] == matrix.tolist()
        assert list(metrics["per_class"]) == ["background", "green", "red"]
        assert metrics["overall_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        matrices.append(matrix)
    report = json.loads((root / "report.json").read_text())
    assert report["pooled"]["confusion_matrix"] == sum(matrices).tolist()
    assert (root / "confusion.png").stat().st_size > 1000

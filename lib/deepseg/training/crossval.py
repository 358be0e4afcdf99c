"""``crossval.py``: k-fold spatial cross-validation on the training store, one unit per fold.

Unit ``fold{k}`` trains a model with ``train.validation_fold: k`` (``from_store``: no tile
overlapping fold k trains) into ``crossval/fold{k}/model``, predicts fold k's tiles whole,
fuses overlapping tiles by their maximum, and scores the pixels at the model's threshold
against the labels (label >= 1 positive; pixels without data left out):
``crossval/fold{k}/metrics.json`` (TP, FP, FN, TN; precision, recall, F1, F0.5, IoU) and
``crossval/fold{k}/errors.tif``, a COG in ``crs`` on the grid lattice over the fold's tiles:
0 TN, 1 FP, 2 FN, 3 TP, 255 outside the fold. The finish pools the folds' counts into
``crossval/report.json``. A K-class model (a store of several classes) is scored per class
instead: overlapping tiles keep the most confident one's class, ``metrics.json`` holds the
confusion matrix and per-class precision, recall, F1 and IoU, overall accuracy and kappa
(``qa.class_scores``), ``errors.tif`` holds label * K + predicted class (0 .. K*K - 1, so
K <= 15) and the finish also draws the pooled matrix, ``crossval/confusion.png``. Runs on
Slurm like every stage (one array task per fold, on GPU nodes: ``uses_gpu``); a killed fold
resumes from its training checkpoint. Memory: a fold's predictions over the box of its
tiles (a training region, not a continent).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.shutil import copy as rio_copy

from ..config import Experiment
from ..core.errors import DeepSegError
from ..geo.grid import PixelBox, TileGrid
from ..model.loading import load_model
from ..qa.class_scores import class_scores, confusion, write_confusion_png
from ..run.driver import run
from ..run.manifest import digest
from ..run.stage import Stage, UnitResult
from ..storage.paths import RunPaths, atomic_path
from .from_store import SETTINGS, train_from_store
from .store_data import StoreData, normalized

log = logging.getLogger(__name__)
ERROR_NODATA = 255  # values: 0 TN, 1 FP, 2 FN, 3 TP


def folder(exp: Experiment, unit: str) -> Path:
    return RunPaths.of(exp).root / "crossval" / unit


def fold_outputs(exp: Experiment, unit: str) -> list[Path]:
    return [folder(exp, unit) / name for name in ("metrics.json", "errors.tif")]


class FoldWorker:
    """Trains and scores one fold (see the module)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def run(self, unit: str) -> UnitResult:
        k, where = int(unit.removeprefix("fold")), folder(self.exp, unit)
        train = dataclasses.replace(self.exp.train, validation_fold=k)
        exp = dataclasses.replace(self.exp, train=train)
        train_from_store(exp, force=True, output=where / "model")
        model = load_model(where / "model", len(exp.input.bands), exp.train.device)
        counts = score_fold(exp, model, where / "errors.tif")
        tiles = counts.pop("tiles")
        if "confusion_matrix" in counts:
            names = model.card.class_table.names
            record = {**counts, **class_scores(np.array(counts["confusion_matrix"]), names)}
        else:
            record = metrics(counts)
        with atomic_path(where / "metrics.json") as tmp:
            tmp.write_text(json.dumps({"fold": k, **record}, indent=2) + "\n")
        return UnitResult(fold_outputs(self.exp, unit), {"tiles": tiles})


@torch.no_grad()
def score_fold(exp: Experiment, model, target: Path) -> dict[str, int]:
    """Predict the held-out tiles, write the error COG, return the pixel counts."""
    data = StoreData(exp.train.store, exp.train.validation_fold)
    grid, t = TileGrid.from_experiment(exp), data.tile_size
    col0, row0 = (data.file["tiles"][k][()][data.split.validate] for k in ("col0", "row0"))
    box = PixelBox(int(col0.min()), int(row0.min()), int(col0.max()) + t, int(row0.max()) + t)
    prob = np.full((box.height, box.width), -1.0, np.float32)  # K-class: the top class's
    labels = np.full((box.height, box.width), 255, np.uint8)
    top = np.zeros((box.height, box.width), np.uint8)  # K-class: the most probable class
    model.network.eval()
    index = data.split.validate
    for start in range(0, len(index), exp.train.batch_size):
        part = index[start : start + exp.train.batch_size]
        images, tile_labels = data.tiles(part)
        x, _, _ = normalized(images, tile_labels, model.card.mean, model.card.std)
        p, c = _tile_predictions(model, x)
        p[tile_labels == 255] = -1
        for j, i in enumerate(range(start, start + len(part))):  # a tile at a time: few
            rows = slice(row0[i] - box.row0, row0[i] - box.row0 + t)
            cols = slice(col0[i] - box.col0, col0[i] - box.col0 + t)
            np.copyto(top[rows, cols], c[j], where=p[j] > prob[rows, cols])
            np.maximum(prob[rows, cols], p[j], out=prob[rows, cols])
            labels[rows, cols] = np.minimum(labels[rows, cols], tile_labels[j])
    data.close()
    scored = (prob >= 0) & (labels != 255)
    if model.classes > 1:
        return _class_errors(exp, grid, box, scored, labels, top, model.classes, len(index), target)
    predicted, truth = prob >= model.card.threshold, (labels >= 1) & (labels != 255)
    errors = np.where(scored, predicted.astype(np.uint8) + 2 * truth, ERROR_NODATA)
    errors = errors.astype(np.uint8)
    _write_cog(errors, grid, box, exp.crs, target)
    counts = {n: int((errors == v).sum()) for n, v in (("tn", 0), ("fp", 1), ("fn", 2), ("tp", 3))}
    return {**counts, "tiles": len(index)}


def _tile_predictions(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of (n, C, T, T) normalized tiles: the probability (K-class: of the top
    class) and the top class (0 for a one-channel model)."""
    logits = model.network(x.to(model.device)).cpu()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]).numpy(), np.zeros(logits[:, 0].shape, np.uint8)
    best, top = torch.softmax(logits, dim=1).max(dim=1)
    return best.numpy(), top.numpy().astype(np.uint8)


def _class_errors(exp, grid, box, scored, labels, top, k: int, tiles: int, target: Path) -> dict:
    """A K-class fold: the error COG (label * K + predicted class) and its confusion matrix."""
    if k * k > ERROR_NODATA:
        raise DeepSegError(f"crossval: {k} classes do not fit the uint8 error raster (K <= 15)")
    pairs = np.where(scored, labels.astype(np.int64) * k + top, ERROR_NODATA)
    _write_cog(pairs.astype(np.uint8), grid, box, exp.crs, target)
    matrix = confusion(labels[scored], top[scored], k)
    return {"confusion_matrix": matrix.tolist(), "tiles": tiles}


def metrics(c: dict[str, int]) -> dict[str, float | int | None]:
    """Precision, recall, F1, F0.5 and IoU of the positive class from pixel counts."""
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None

    def f(beta: float) -> float | None:
        den = (1 + beta**2) * tp + beta**2 * fn + fp
        return (1 + beta**2) * tp / den if den else None

    iou = tp / (tp + fp + fn) if tp + fp + fn else None
    return {**c, "precision": precision, "recall": recall, "f1": f(1.0), "f0_5": f(0.5),
            "iou": iou}  # fmt: skip


def _write_cog(errors: np.ndarray, grid: TileGrid, box: PixelBox, crs: str, target: Path):
    profile = dict(driver="GTiff", width=box.width, height=box.height, count=1, dtype="uint8",
                   crs=crs, transform=grid.transform(box), nodata=ERROR_NODATA, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate")  # fmt: skip
    stage = target.with_name(target.stem + ".staging.tif")
    with atomic_path(stage) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(errors, 1)
    with atomic_path(target) as tmp:
        rio_copy(stage, tmp, driver="COG", COMPRESS="DEFLATE", OVERVIEW_RESAMPLING="NEAREST")
    stage.unlink()


def pooled(exp: Experiment, redo: bool) -> dict[str, object]:
    """Sum every fold's counts into ``crossval/report.json`` (the folds' metrics beside)."""
    folds = [json.loads((folder(exp, u) / "metrics.json").read_text()) for u in fold_units(exp)]
    if "confusion_matrix" in folds[0]:
        return _pooled_classes(exp, folds)
    total = {k: sum(f[k] for f in folds) for k in ("tp", "fp", "fn", "tn")}
    report = {"pooled": metrics(total), "folds": folds}
    with atomic_path(RunPaths.of(exp).root / "crossval" / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    p = report["pooled"]
    log.info("crossval: %d folds, pooled precision %s, recall %s, F0.5 %s, IoU %s", len(folds),
             *(f"{p[k]:.3f}" if p[k] is not None else "n/a"
               for k in ("precision", "recall", "f0_5", "iou")))  # fmt: skip
    return {"folds": len(folds)}


def _pooled_classes(exp: Experiment, folds: list[dict]) -> dict[str, object]:
    """K-class folds: their confusion matrices summed, scored and drawn."""
    root, names = RunPaths.of(exp).root / "crossval", tuple(folds[0]["per_class"])
    matrix = sum(np.array(f["confusion_matrix"]) for f in folds)
    pooled = {"confusion_matrix": matrix.tolist(), **class_scores(matrix, names)}
    with atomic_path(root / "report.json") as tmp:
        tmp.write_text(json.dumps({"pooled": pooled, "folds": folds}, indent=2) + "\n")
    title = f"{exp.name}: crossval, {len(folds)} folds pooled"
    write_confusion_png(root / "confusion.png", matrix, names, title)
    log.info("crossval: %d folds, pooled overall accuracy %.3f, kappa %s", len(folds),
             pooled["overall_accuracy"] or 0, pooled["kappa"])  # fmt: skip
    return {"folds": len(folds)}


def fold_units(exp: Experiment) -> list[str]:
    return [f"fold{k}" for k in range(exp.train.folds)]


def crossval_made_from(exp: Experiment):
    """A fold is made from the store's content and the training settings."""
    stats = exp.train.store.parent / "normalization_stats.json"
    version = json.loads(stats.read_text()).get("data_version") if stats.exists() else None
    settings = {k: getattr(exp.train, k) for k in SETTINGS.split() if k != "validation_fold"}
    made = digest(version, settings, exp.evaluate.beta)
    return lambda unit: made


STAGE = Stage(
    name="crossval",
    units=fold_units,
    expected=fold_outputs,
    worker=FoldWorker,
    finish=pooled,
    uses_gpu=True,
    made_from=crossval_made_from,
)


def crossval(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Every fold trained and scored, then pooled (see ``run.driver.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

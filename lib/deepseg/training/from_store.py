"""``train.py`` on a training store (``create_training_data.py``): your tiles -> a model folder.

The built-in U-Net (``framework: deepseg-unet``) learns label >= 1 against the rest (pixels
without input data left out) from ``stores.training_store``'s tiles, drawn by ``store_data``
(the validation fold held out). Loss: binary cross-entropy plus soft Dice; AdamW with a
one-cycle learning rate peaking at ``train.learning_rate``. Every ``train.validate_every``
steps (and at the last) the validation tiles are predicted whole and the threshold with the
best pixel F-beta (``evaluate.beta``) is found; the step with the best F-beta is the one
written. A store of several classes (``train.class_column``) trains a K-class model instead
(background + its classes; cross-entropy plus soft Dice over the classes; the step with the
best macro F-beta of the labelled classes is kept) whose config.yaml names the classes, so
predict makes a K-class run of it. Each validation also writes a checkpoint (weights,
optimizer, schedule, random states) to ``.{model folder}.training/`` beside the model
folder, so a killed run restarted with the same settings resumes there and ends with the
same weights as an uninterrupted one (same machine and torch build). Written:
``best_model.pth``, ``normalization_stats.json`` (the store's statistics and
``data_version``), ``config.yaml`` (threshold, classes, training settings),
``training_log.jsonl`` (one line per validation) and ``training_curves.png``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..model.card import CONFIG, STATS, WEIGHTS
from ..model.loading import choose_device
from ..model.unet import DeepSegUNet
from ..qa.class_scores import confusion
from ..qa.metrics import PixelTally
from ..run.manifest import digest
from ..storage.partials import atomic_folder
from ..storage.paths import atomic_path
from .scoring import (
    Calibration,
    calibrate_tally,
    class_calibration,
    class_loss,
    segmentation_loss,
)
from .store_data import StoreData, normalized

log = logging.getLogger(__name__)
SETTINGS = "seed crop_size batch_size steps learning_rate validate_every base_channels depth"
SETTINGS += " validation_fold"


def train_from_store(exp: Experiment, force: bool = False, output: Path | None = None) -> dict:
    """Train on ``train.store`` and write the model folder (``output`` or ``train.output``)."""
    cfg = exp.train
    target = Path(output).absolute() if output else cfg.output
    if target.exists() and not force:
        raise DeepSegError(f"{target}: the model folder exists; pass --force to replace it")
    stats = _store_stats(cfg.store)
    data = StoreData(cfg.store, cfg.validation_fold)
    if data.data_version != stats["data_version"]:
        raise DeepSegError(f"{cfg.store}: its statistics are of another store; rerun "
                           "create_training_data.py --force")  # fmt: skip
    crop, factor = min(cfg.crop_size, data.tile_size), 2**cfg.depth
    if crop % factor:
        raise DeepSegError(f"train.crop_size: {crop} px is not a multiple of 2**train.depth")
    mean, std = (np.asarray(stats[k], dtype=np.float32) for k in ("mean", "std"))
    device = choose_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    multi = len(data.classes) > 1  # a K-class model: background and the store's classes
    loss_of = class_loss if multi else segmentation_loss
    network = DeepSegUNet(len(mean), len(data.classes) + 1 if multi else 1, cfg.base_channels,
                          cfg.depth)  # fmt: skip
    network = network.to(device, memory_format=torch.channels_last)  # 1.4x faster on CPU
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.learning_rate, total_steps=cfg.steps, pct_start=0.2
    )
    work = target.parent / f".{target.name}.training"
    made_from = digest(data.data_version, {k: getattr(cfg, k) for k in SETTINGS.split()})
    run = {"step": 0, "best": None, "rows": [], "losses": []}
    saved = _load_checkpoint(work, made_from)
    if saved is not None:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        run = saved["run"]
        log.info("train: resuming at step %d from %s", run["step"] + 1, work)
    steps = range(run["step"] + 1, cfg.steps + 1)
    for step in progress(steps, len(steps), "train: steps", log):
        x, y, w = (v.to(device) for v in data.batch(rng, cfg.batch_size, crop, mean, std, multi))
        network.train()
        loss = loss_of(network(x), y, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        run["losses"].append(loss.item())
        if step % cfg.validate_every and step != cfg.steps:
            continue
        cal = validate(network, data, mean, std, device, exp.evaluate.beta, cfg.batch_size)
        row = {
            "step": step,
            "loss": float(np.mean(run["losses"][-cfg.validate_every :])),
            **{k: getattr(cal, k) for k in ("fbeta", "precision", "recall", "threshold")},
        }
        run["rows"].append(row)  # fmt: skip
        log.info("step %d: loss %.3f; validation F%g %.3f at threshold %.3f", step,
                 row["loss"], exp.evaluate.beta, cal.fbeta, cal.threshold)  # fmt: skip
        if run["best"] is None or cal.fbeta > run["best"][1].fbeta:
            run["best"] = (step, cal, copy.deepcopy(network.state_dict()))
        run["step"] = step
        _save_checkpoint(work, made_from, network, optimizer, schedule, rng, run)
    data.close()
    step, cal, state = run["best"]
    classes = ["background", *data.classes] if multi else 1
    _write_folder(target, exp, state, stats, step, cal, run["rows"], classes)
    shutil.rmtree(work, ignore_errors=True)
    log.info("train: wrote %s (step %d, threshold %.3f, validation F-beta %.3f)", target, step,
             cal.threshold, cal.fbeta)  # fmt: skip
    return {"best_step": step, "threshold": cal.threshold, "fbeta": cal.fbeta}


@torch.no_grad()
def validate(network, data: StoreData, mean, std, device, beta: float, batch: int) -> Calibration:
    """The best-F-beta threshold over every validation tile's pixels (tiles predicted whole);
    a K-class network's macro scores (``class_calibration``)."""
    network.eval()
    tally, k, multi = PixelTally(), len(data.classes) + 1, len(data.classes) > 1
    matrix = np.zeros((k, k), np.int64)
    index = data.split.validate
    for start in range(0, len(index), batch):
        images, labels = data.tiles(index[start : start + batch])
        x, y, w = normalized(images, labels, mean, std)
        logits = network(x.to(device)).cpu()
        keep = w.numpy() > 0
        if multi:
            matrix += confusion(labels[keep[:, 0]], logits.argmax(1).numpy()[keep[:, 0]], k)
            continue
        prob = torch.sigmoid(logits).numpy()
        tally.add(prob[keep], np.zeros(int(keep.sum()), bool), y.numpy()[keep] > 0)
    return class_calibration(matrix, beta) if multi else calibrate_tally(tally, beta)


def _store_stats(store: Path) -> dict:
    path = store.parent / "normalization_stats.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepSegError(f"{path}: unreadable ({exc}); run create_training_data.py") from None


def _load_checkpoint(work: Path, made_from: str) -> dict | None:
    path = work / "checkpoint.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if saved.get("made_from") != made_from:
        log.warning("train: %s is of other settings or data; starting over", path)
        return None
    return saved


def _save_checkpoint(work: Path, made_from: str, network, optimizer, schedule, rng, run) -> None:
    work.mkdir(parents=True, exist_ok=True)
    state = {"made_from": made_from, "network": network.state_dict(),
             "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "run": run}  # fmt: skip
    with atomic_path(work / "checkpoint.pt") as tmp:
        torch.save(state, tmp)


def _write_folder(folder: Path, exp: Experiment, state, stats: dict, step: int,
                  cal: Calibration, rows: list[dict], classes: int | list) -> None:  # fmt: skip
    """The model folder in the deployment layout (``model.card``), written atomically."""
    cfg = exp.train
    weights = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, weights)
    config = {
        "framework": "deepseg-unet", "in_channels": len(stats["mean"]), "classes": classes,
        "base_channels": cfg.base_channels, "depth": cfg.depth, "threshold": cal.threshold,
        "model_version": f"{exp.name}-unet-{stats['data_version']}",
        "description": f"DeepSeg U-Net trained by train.py on {cfg.store} (experiment "
        f"{exp.name}); threshold = best pixel F{exp.evaluate.beta:g} on fold "
        f"{cfg.validation_fold}",
        "training": {**{k: getattr(cfg, k) for k in SETTINGS.split()}, "best_step": step,
                     "torch": str(torch.__version__), "classes": stats.get("classes")},
    }  # fmt: skip
    keep = {k: stats[k] for k in ("mean", "std", "data_version")}
    with atomic_folder(folder) as tmp:
        (tmp / WEIGHTS).write_bytes(weights.getvalue())
        (tmp / STATS).write_text(json.dumps(keep, indent=2) + "\n")
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        _curves(rows, tmp / "training_curves.png")


def _curves(rows: list[dict], path: Path) -> None:
    """Loss and validation F-beta against the step, one PNG (Agg canvas: no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], "o-", label="training loss")
    ax.plot(steps, [r["fbeta"] for r in rows], "s-", label="validation F-beta")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)

"""Training data for ``train.py``: generated scenes with their truth, drawn as augmented crops.

Scenes come from ``scenes.render_scene`` (every other one with a giant slump wider than
512 px; ``TRAIN_ROADS`` roads with gravel pads, like the demo scene), labelled with their
slump footprints. A batch holds ``train.batch_size`` crops of ``train.crop_size`` px: 40 %
around a point on a slump's outline (every slump equally likely, whatever its size), 30 % on
a look-alike's, 30 % anywhere. Crops are augmented (the 8 flips and rotations; brightness,
per-band gain and offset, noise, in 0-255 units, nodata kept 0) and normalized as predict.py
does (``inference.normalize``, with the per-band mean and std of the training scenes' valid
pixels, ``band_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rasterio.features import rasterize

from ..config import TrainConfig
from ..model.inference import normalize
from ..model.loading import LoadedModel
from .scenes import render_scene

CROP_MIX = (0.4, 0.3)  # shares of crops around a slump, around a look-alike
TRAIN_ROADS = 2  # roads (each with a gravel pad where one fits) per generated scene


@dataclass(frozen=True)
class LabelledScene:
    """A generated scene with its truth: pixels (3, H, W) uint8 (0 = nodata), ``truth`` (H, W)
    True inside slump footprints, and the outline vertices, (n, 2) row, col px, of each slump
    and each look-alike."""

    pixels: np.ndarray
    truth: np.ndarray
    slump_outlines: list[np.ndarray]
    lookalike_outlines: list[np.ndarray]


def labelled_scene(size: int, seed: int, giants: int, roads: int) -> LabelledScene:
    """The ``size`` x ``size`` px scene of ``seed`` with its slump mask and feature outlines."""
    scene = render_scene(size, size, seed, giants=giants, roads=roads)
    truth = np.zeros((size, size), dtype=bool)
    if scene.slumps:
        truth = rasterize(scene.slumps, out_shape=(size, size)) > 0

    def outlines(polygons: list) -> list[np.ndarray]:
        return [np.asarray(p.exterior.coords)[:, ::-1] for p in polygons]

    lookalikes = outlines([poly for _, poly in scene.lookalikes])
    return LabelledScene(scene.pixels, truth, outlines(scene.slumps), lookalikes)


def band_stats(scenes: list[LabelledScene]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (0-255 units, rounded to 3 decimals) of all valid pixels."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for scene in scenes:
        valid = scene.pixels.any(axis=0)
        values = scene.pixels[:, valid].astype(np.float64)
        total += values.sum(axis=1)
        squares += (values**2).sum(axis=1)
        count += values.shape[1]
    mean = total / count
    std = np.sqrt(squares / count - mean**2)
    return np.round(mean, 3), np.round(std, 3)


def _crop_origin(rng: np.random.Generator, scene: LabelledScene, crop: int) -> tuple[int, int]:
    """Top-left (row, col) of a crop around a point on the outline of a slump (every slump
    equally likely), of a look-alike, or anywhere."""
    size = scene.truth.shape[0]
    pick = rng.random()
    outlines = []
    if pick < CROP_MIX[0]:
        outlines = scene.slump_outlines
    elif pick < sum(CROP_MIX):
        outlines = scene.lookalike_outlines
    if outlines:
        outline = outlines[rng.integers(len(outlines))]
        centre = outline[rng.integers(len(outline))]
    else:
        centre = rng.uniform(0, size, 2)
    top_left = centre - rng.uniform(0.15, 0.85, 2) * crop
    row, col = np.clip(top_left, 0, size - crop).astype(int)
    return int(row), int(col)


def augment(
    rng: np.random.Generator, pixels: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A random flip/rotation and photometric change of a (3, c, c) uint8 crop and its truth.

    Returns float32 pixels in 0-255 units (nodata stays 0, valid pixels stay >= 1)."""
    valid = pixels.any(axis=0)
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    x = pixels.astype(np.float32) * gain.astype(np.float32)[:, None, None]
    x += np.float32(rng.uniform(-8, 8))
    x += rng.normal(0, rng.uniform(0, 3), x.shape).astype(np.float32)
    x = np.where(valid, np.clip(x, 1, 255), 0).astype(np.float32)
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    x, truth = np.rot90(x, turns, axes=(1, 2)), np.rot90(truth, turns)
    if flip:
        x, truth = x[:, :, ::-1], truth[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(truth)


def training_batch(
    rng: np.random.Generator, scenes: list[LabelledScene], cfg: TrainConfig, model: LoadedModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, c, c) normalized crops and (B, 1, c, c) float truth on the model's device."""
    xs, ys = [], []
    c = cfg.crop_size
    for _ in range(cfg.batch_size):
        scene = scenes[rng.integers(len(scenes))]
        row, col = _crop_origin(rng, scene, c)
        window = (slice(row, row + c), slice(col, col + c))
        x, y = augment(rng, scene.pixels[:, window[0], window[1]], scene.truth[window])
        xs.append(normalize(x, x.any(axis=0), model))
        ys.append(torch.from_numpy(y))
    truth = torch.stack(ys)[:, None].to(model.device, torch.float32)
    return torch.stack(xs).contiguous(memory_format=torch.channels_last), truth

"""Predicting the tiles of one chunk: normalization, scales, TTA and the merge inside the chunk.

For each tile and each scale s in ``inference.scales``, the ``round(T / s)`` square centred on
the tile is downsampled to T x T (bilinear, antialiased), predicted, upsampled back and its
centre T x T kept. TTA predictions (probabilities) are averaged within a scale; scales are
fused by pixel-wise maximum, and bit i of ``scale_hits`` records where scale i reached the
threshold. Overlapping tiles are merged by maximum: P(x, y) = max over the tiles covering it
(the RTS deployment rule), so the result does not depend on how tiles are grouped in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from .config import Experiment
from .grid import TileGrid, scale_context_px
from .model import LoadedModel
from .stores import PROB_NODATA, TileStore

Transform = Callable[[torch.Tensor], torch.Tensor]
_IDENTITY: tuple[Transform, Transform] = (lambda x: x, lambda x: x)
_HFLIP: tuple[Transform, Transform] = (lambda x: x.flip(-1), lambda x: x.flip(-1))
_VFLIP: tuple[Transform, Transform] = (lambda x: x.flip(-2), lambda x: x.flip(-2))
_ROT180: tuple[Transform, Transform] = (lambda x: x.flip(-2, -1), lambda x: x.flip(-2, -1))
TTA: dict[str, tuple[tuple[Transform, Transform], ...]] = {
    "none": (_IDENTITY,),
    "minimal": (_IDENTITY, _HFLIP),
    "standard": (_IDENTITY, _HFLIP, _VFLIP, _ROT180),
}
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def normalize(pixels: np.ndarray, valid: np.ndarray, model: LoadedModel) -> torch.Tensor:
    """(C, H, W) float32 tensor ``(x - mean) / std`` on the model's device; invalid pixels -> 0."""
    x = torch.from_numpy(pixels.astype(np.float32, copy=False)).to(model.device)
    mean = torch.from_numpy(model.mean).to(model.device)[:, None, None]
    std = torch.from_numpy(model.std).to(model.device)[:, None, None]
    x = (x - mean) / std
    mask = torch.from_numpy(valid).to(model.device)
    return torch.where(mask[None], x, torch.zeros((), device=model.device))


def probabilities(model: LoadedModel, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """(N, H, W) probability of the positive class for an (N, C, H, W) normalized batch."""
    cast = (
        torch.autocast(model.device.type, dtype=AUTOCAST[precision])
        if precision in AUTOCAST
        else nullcontext()
    )
    with torch.inference_mode(), cast:
        logits = model.network(batch).float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, model.positive_class]


def predict_with_tta(
    model: LoadedModel, batch: torch.Tensor, tta: str, precision: str
) -> torch.Tensor:
    """Mean probability over the TTA transforms, each undone on its prediction."""
    total = None
    for forward, inverse in TTA[tta]:
        p = inverse(probabilities(model, forward(batch), precision)[:, None])[:, 0]
        total = p if total is None else total + p
    return total / len(TTA[tta])


def _scale_inputs(
    image: torch.Tensor, offsets: list[tuple[int, int]], tile: int, scale: float
) -> torch.Tensor:
    """(n, C, T, T) model inputs at one scale for the tiles whose top-left is at ``offsets``."""
    context, lo = scale_context_px(tile, scale)
    crops = []
    for row, col in offsets:
        crop = image[None, :, row - lo : row - lo + context, col - lo : col - lo + context]
        if context != tile:
            crop = F.interpolate(
                crop, size=(tile, tile), mode="bilinear", align_corners=False, antialias=True
            )
        crops.append(crop)
    return torch.cat(crops)


def _back_to_tile(prob: torch.Tensor, tile: int, scale: float) -> torch.Tensor:
    """Upsample (n, T, T) predictions of the context back to its size and keep the centre tile."""
    context, lo = scale_context_px(tile, scale)
    if context == tile:
        return prob
    up = F.interpolate(prob[:, None], size=(context, context), mode="bilinear", align_corners=False)
    return up[:, 0, lo : lo + tile, lo : lo + tile]


def predict_tiles(
    model: LoadedModel,
    image: torch.Tensor,
    offsets: list[tuple[int, int]],
    exp: Experiment,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale-fused probability (n, T, T) and scale bits (n, T, T) of a batch of tiles."""
    tile, inf = exp.grid.tile_size, exp.inference
    fused = bits = None
    for i, scale in enumerate(inf.scales):
        batch = _scale_inputs(image, offsets, tile, scale)
        p = _back_to_tile(predict_with_tta(model, batch, inf.tta, inf.precision), tile, scale)
        p = p.clamp(0.0, 1.0)
        hit = (p >= threshold).to(torch.uint8) << i
        fused = p if fused is None else torch.maximum(fused, p)
        bits = hit if bits is None else bits | hit
    return fused, bits


def predict_chunk(
    store: TileStore, model: LoadedModel, exp: Experiment, grid: TileGrid, threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Probability (float32, nodata -1) and scale bits over the chunk's footprint.

    Also returns how many tiles have a valid pixel at or above ``threshold``.
    """
    footprint = grid.chunk_footprint(*store.chunk)
    inner = footprint.slices_in(store.box)
    image = normalize(store.pixels, store.valid, model)
    valid = torch.from_numpy(np.ascontiguousarray(store.valid[inner])).to(model.device)
    tile, size = grid.tile_size, exp.inference.batch_size
    offsets = list(zip(store.tiles.row_off.tolist(), store.tiles.col_off.tolist(), strict=True))
    prob = torch.full((footprint.height, footprint.width), PROB_NODATA, device=model.device)
    hits = torch.zeros((footprint.height, footprint.width), dtype=torch.uint8, device=model.device)
    with_detection = 0
    for start in range(0, len(offsets), size):
        batch = offsets[start : start + size]
        fused, bits = predict_tiles(model, image, batch, exp, threshold)
        for k, (row, col) in enumerate(batch):
            r, c = row - inner[0].start, col - inner[1].start
            window = (slice(r, r + tile), slice(c, c + tile))
            prob[window] = torch.maximum(prob[window], fused[k])
            hits[window] |= bits[k]
            with_detection += bool(((fused[k] >= threshold) & valid[window]).any())
    prob[~valid] = PROB_NODATA
    hits[~valid] = 0
    return prob.cpu().numpy(), hits.cpu().numpy(), with_detection

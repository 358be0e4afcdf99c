"""Predicting the tiles of one chunk: normalization, scales, TTA, and the merge inside a chunk.

Per the RTS deployment spec, for each tile and each scale s of ``inference.scales`` the
``round(T / s)`` square centred on the tile is downsampled to T x T (bilinear), predicted,
upsampled back (bilinear) and its centre T x T kept. TTA predictions (probabilities) are
averaged within a scale, each transform undone on its prediction; scales are fused by
pixel-wise maximum, and bit i of the scale hits records where scale i reached the threshold.
Overlapping tiles merge by ``merge.method`` (``overlap``: ``max``, the spec's rule, or
``sinusoidal``). Everything runs on the model's device; the
chunk's pixels are staged once and tiles are cut from them there.

A K-class model (config.yaml names its classes, ``classes``) keeps all K softmax
probabilities, shape (K, H, W) where a binary one has (H, W). TTA averages them per class.
Scales, and the ``max`` merge of overlapping tiles, take per pixel the whole probability
vector of the prediction whose top class is most confident (the first on ties), so the
class map stays one real prediction; bit i of the scale hits records where scale i's top
class is the fused one. ``sinusoidal`` is the weighted mean per class (the vector still
sums to 1); ``overlap`` merges such tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Experiment
from ..geo.grid import PixelBox, TileGrid, scale_context_px
from ..stores.layout import PROB_NODATA
from ..stores.tile_store import TileStore
from .loading import LoadedModel
from .overlap import MERGE_METHODS, more_confident

log = logging.getLogger(__name__)
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
_TORCH_SAFE = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64}


def normalize(pixels: np.ndarray, valid: np.ndarray, model: LoadedModel) -> torch.Tensor:
    """(C, H, W) float32 ``(x - mean[c]) / std[c]`` on the model's device; invalid -> 0.

    The raw pixels travel to the device in their own type (uint8: a quarter of float32).
    NaN pixels are invalid already (``sources``), so they never reach a neighbour.
    """
    pixels = pixels.astype(_TORCH_SAFE.get(pixels.dtype, pixels.dtype), copy=False)
    x = torch.from_numpy(pixels).to(model.device).float()
    mean = torch.from_numpy(model.mean).to(model.device)[:, None, None]
    std = torch.from_numpy(model.std).to(model.device)[:, None, None]
    mask = torch.from_numpy(valid).to(model.device)
    return torch.where(mask[None], (x - mean) / std, torch.zeros((), device=model.device))


def probabilities(model: LoadedModel, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """(N, H, W) probability of the positive class for an (N, C, H, W) normalized batch;
    (N, K, H, W) class probabilities for a K-class model."""
    cast = (
        torch.autocast(model.device.type, dtype=AUTOCAST[precision])
        if precision in AUTOCAST
        else nullcontext()
    )
    if model.device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), cast:
        logits = model.network(batch).float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    if model.card.class_table is not None:
        return torch.softmax(logits, dim=1)
    return torch.softmax(logits, dim=1)[:, model.positive_class]


def predict_with_tta(
    model: LoadedModel, batch: torch.Tensor, tta: str, precision: str
) -> torch.Tensor:
    """Mean probability over the TTA transforms, each undone on its prediction (the
    transforms act on the last two axes)."""
    total = None
    for forward, inverse in TTA[tta]:
        p = inverse(probabilities(model, forward(batch), precision))
        total = p if total is None else total + p
    return total / len(TTA[tta])


def scale_inputs(
    image: torch.Tensor, offsets: list[tuple[int, int]], tile: int, scale: float
) -> torch.Tensor:
    """(n, C, T, T) model inputs at one scale for the tiles whose top-left is at ``offsets``
    (row, col inside ``image``, which holds the halo the widest scale needs)."""
    context, lo = scale_context_px(tile, scale)
    crops = torch.stack(
        [image[:, r - lo : r - lo + context, c - lo : c - lo + context] for r, c in offsets]
    )
    if context == tile:
        return crops
    return F.interpolate(crops, size=(tile, tile), mode="bilinear", align_corners=False)


def back_to_tile(prob: torch.Tensor, tile: int, scale: float) -> torch.Tensor:
    """Upsample (n, T, T) or (n, K, T, T) predictions of the context back to its size; keep
    the centre tile."""
    context, lo = scale_context_px(tile, scale)
    if context == tile:
        return prob
    planes = prob if prob.ndim == 4 else prob[:, None]
    up = F.interpolate(planes, size=(context, context), mode="bilinear", align_corners=False)
    up = up[..., lo : lo + tile, lo : lo + tile]
    return up if prob.ndim == 4 else up[:, 0]


@dataclass
class BatchPrediction:
    prob: torch.Tensor  # (n, T, T) or (n, K, T, T) scale-fused probability, clipped to [0, 1]
    bits: torch.Tensor  # (n, T, T) uint8, bit i where scale i reached the threshold
    out_of_range: torch.Tensor  # scalar: predicted values outside [0, 1] or NaN, before clipping


def predict_tiles(
    model: LoadedModel, image: torch.Tensor, offsets: list[tuple[int, int]], exp: Experiment,
    threshold: float,
) -> BatchPrediction:  # fmt: skip
    """Scale-fused probabilities and scale bits of a batch of tiles."""
    tile, inf = exp.grid.tile_size, exp.inference
    fused = bits = None
    bad = torch.zeros((), dtype=torch.int64, device=image.device)
    tops = []
    for i, scale in enumerate(inf.scales):
        batch = scale_inputs(image, offsets, tile, scale)
        p = back_to_tile(predict_with_tta(model, batch, inf.tta, inf.precision), tile, scale)
        bad += ((p < 0) | (p > 1) | torch.isnan(p)).sum()
        p = torch.nan_to_num(p, nan=0.0).clamp(0.0, 1.0)
        if p.ndim == 4:  # K classes: the most confident scale's vector; bits set below
            tops.append(p.argmax(dim=1))
            fused = p if fused is None else torch.where(more_confident(p, fused), p, fused)
            continue
        hit = (p >= threshold).to(torch.uint8) << i
        fused = p if fused is None else torch.maximum(fused, p)
        bits = hit if bits is None else bits | hit
    if tops:
        top = fused.argmax(dim=1)
        bits = sum(((t == top).to(torch.uint8) << i for i, t in enumerate(tops)), start=0)
    return BatchPrediction(fused, bits, bad)


def detection(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(T, T) bool: where a tile detects something: the probability reaches ``threshold``;
    for K classes (K, T, T), the top class is not class 0 (by convention, the background)."""
    return prob.argmax(dim=0) != 0 if prob.ndim == 3 else prob >= threshold


@dataclass
class ChunkPrediction:
    """A chunk's prediction over its footprint (numpy, on the host)."""

    prob: np.ndarray  # float32 (H, W) or K classes (K, H, W), [0, 1], nodata -1
    hits: np.ndarray  # uint8 scale bits
    weight: np.ndarray | None  # float32 sum of window weights (sinusoidal only)
    tiles_with_detection: int
    out_of_range: int  # predicted values that were outside [0, 1] or NaN (clipped)


class BatchSize:
    """``inference.batch_size``, halved for the rest of the run on CUDA out-of-memory."""

    def __init__(self, size: int) -> None:
        self.size = size

    def shrink(self, exc: BaseException) -> None:
        if self.size == 1:
            raise exc
        self.size //= 2
        log.warning("out of GPU memory: batch size lowered to %d (%s)", self.size, exc)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def predict_chunk(
    store: TileStore,
    model: LoadedModel,
    exp: Experiment,
    grid: TileGrid,
    threshold: float,
    batch_size: BatchSize | None = None,
) -> ChunkPrediction:
    """Predict every tile of ``store`` and merge them over the chunk's footprint."""
    footprint = grid.chunk_footprint(*store.chunk)
    return predict_footprint(store, footprint, model, exp, threshold, batch_size)


def predict_footprint(
    store: TileStore,
    footprint: PixelBox,
    model: LoadedModel,
    exp: Experiment,
    threshold: float,
    batch_size: BatchSize | None = None,
) -> ChunkPrediction:
    """Predict every tile of ``store`` (``grid.tile_size`` px, inference.scales, tta and
    precision) and merge them (``merge.method``) over ``footprint`` (px in the store's frame,
    inside its box by the halo the widest scale needs)."""
    inner = footprint.slices_in(store.box)
    image = normalize(store.pixels, store.valid, model)
    valid = torch.from_numpy(np.ascontiguousarray(store.valid[inner])).to(model.device)
    tile, size = exp.grid.tile_size, batch_size or BatchSize(exp.inference.batch_size)
    offsets = list(zip(store.tiles.row_off.tolist(), store.tiles.col_off.tolist(), strict=True))
    shape = (footprint.height, footprint.width)
    classes = () if model.card.class_table is None else (model.classes,)
    merged = MERGE_METHODS[exp.merge.method]((*classes, *shape), tile, model.device)
    hits = torch.zeros(shape, dtype=torch.uint8, device=model.device)
    detected = torch.zeros((), dtype=torch.int64, device=model.device)
    bad = torch.zeros((), dtype=torch.int64, device=model.device)
    start = 0
    while start < len(offsets):
        batch = offsets[start : start + size.size]
        try:
            pred = predict_tiles(model, image, batch, exp, threshold)
        except torch.OutOfMemoryError as exc:
            size.shrink(exc)
            continue
        bad += pred.out_of_range
        for k, (row, col) in enumerate(batch):
            r, c = row - inner[0].start, col - inner[1].start
            window = (slice(r, r + tile), slice(c, c + tile))
            merged.add(window, pred.prob[k])
            hits[window] |= pred.bits[k]
            detected += (detection(pred.prob[k], threshold) & valid[window]).any()
        start += len(batch)
    prob, weight = merged.result()
    prob = torch.where(valid, prob, PROB_NODATA)
    hits[~valid] = 0
    return ChunkPrediction(
        prob.cpu().numpy(),
        hits.cpu().numpy(),
        None if weight is None else torch.where(valid, weight, 0.0).cpu().numpy(),
        int(detected),
        int(bad),
    )

"""A training store as batches: the validation fold held out, augmented crops drawn.

The tiles of ``train.validation_fold`` validate; the others train, except any whose box
overlaps a validation tile's (tiles overlap when ``train.stride`` < ``grid.tile_size``), so
no validation pixel is ever trained on. A batch is ``train.batch_size`` crops of
``train.crop_size`` px, each from a random training tile at a random offset, turned by one of
the 8 flips and rotations (exact: labels are never resampled), some with a nodata strip at
one side (``NODATA_EDGE_SHARE``), normalized as predict.py does.
Target: label >= 1 (any class), or with ``classes`` the label itself (0 background, k class
k: a store of several classes trains a K-class model); weight 0 where the input has no data
(label 255).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..core.errors import DeepSegError
from ..stores.training_store import LABEL_NODATA

# share of crops whose left strip (of 1 to crop / 2 px; any side, after the turn) is made
# nodata: predict sees data edges and nodata holes that training tiles inside the labelled
# area rarely have, and a model that never saw one fires along them
NODATA_EDGE_SHARE = 0.3


@dataclass(frozen=True)
class Split:
    """Tile indices of the store (sorted) that train and that validate."""

    train: np.ndarray
    validate: np.ndarray


def split_folds(col0: np.ndarray, row0: np.ndarray, fold: np.ndarray, held: int, t: int) -> Split:
    """Fold ``held`` validates; training tiles are the others that overlap none of its tiles
    (grid px, tiles of ``t`` px)."""
    held_out = fold == held
    vc, vr = col0[held_out], row0[held_out]
    order = np.lexsort((vc, vr))
    vc, vr = vc[order], vr[order]
    clear = np.ones(len(col0), dtype=bool)
    for i in np.flatnonzero(~held_out):  # rows of validation tiles within reach, then columns
        lo, hi = np.searchsorted(vr, [row0[i] - t + 1, row0[i] + t])
        clear[i] = not np.any(np.abs(vc[lo:hi] - col0[i]) < t)
    return Split(np.flatnonzero(~held_out & clear), np.flatnonzero(held_out))


class StoreData:
    """The store's tiles in memory-sized reads: its table at once, pixels per batch."""

    def __init__(self, path: Path, held_fold: int) -> None:
        if not path.is_file():
            raise DeepSegError(f"train.store: {path} does not exist; run create_training_data.py")
        self.file = h5py.File(path, "r")
        tiles = self.file["tiles"]
        self.tile_size = int(self.file.attrs["tile_size"])
        self.data_version = str(self.file.attrs["data_version"])
        self.classes = tuple(json.loads(self.file.attrs["classes"]))  # class k: classes[k - 1]
        self.split = split_folds(
            tiles["col0"][()], tiles["row0"][()], tiles["fold"][()], held_fold, self.tile_size
        )
        if not len(self.split.train) or not len(self.split.validate):
            raise DeepSegError(
                f"{path}: train.validation_fold {held_fold} leaves {len(self.split.train)} "
                f"training and {len(self.split.validate)} validation tiles; both must be > 0 "
                "(more labelled area, or smaller train.fold_block_px)"
            )

    def tiles(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (n, bands, T, T) and labels (n, T, T) of tiles ``index`` (in that order),
        one chunk read per tile (h5py's list selections are far slower)."""
        images, labels = self.file["images"], self.file["labels"]
        return np.stack([images[i] for i in index]), np.stack([labels[i] for i in index])

    def batch(
        self, rng: np.random.Generator, size: int, crop: int, mean: np.ndarray, std: np.ndarray,
        classes: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Normalized crops (n, bands, crop, crop) float32, target and weight (n, 1, crop, crop)
        (see ``normalized`` for ``classes``)."""
        index = rng.choice(self.split.train, size=size)
        images, labels = self.tiles(index)
        offsets = rng.integers(0, self.tile_size - crop + 1, size=(size, 2))
        turns = rng.integers(0, 8, size=size)
        xs, ys = [], []
        edges = rng.random(size) < NODATA_EDGE_SHARE
        widths = rng.integers(1, crop // 2 + 1, size=size)
        for i, (img, lab, (r, c), turn) in enumerate(
            zip(images, labels, offsets, turns, strict=True)
        ):
            x, y = img[:, r : r + crop, c : c + crop], lab[r : r + crop, c : c + crop]
            y = dihedral(y[None], int(turn))[0].copy()
            if edges[i]:  # the data ends here, as at a mosaic's edge: the rest must stay off
                y[:, : widths[i]] = LABEL_NODATA
            xs.append(dihedral(x, int(turn)))
            ys.append(y)
        return normalized(np.stack(xs), np.stack(ys), mean, std, classes)

    def close(self) -> None:
        self.file.close()


def dihedral(array: np.ndarray, turn: int) -> np.ndarray:
    """One of the 8 flips and rotations of the last two axes (turn 0 = as it is)."""
    out = np.rot90(array, turn % 4, axes=(-2, -1))
    return np.flip(out, axis=-1) if turn >= 4 else out


def normalized(
    images: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray,
    classes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(x - mean) / std per band (0 where no band has data, as predict.py feeds nodata),
    target (label 1..254; with ``classes`` the label, int64, 0 where it is 255) and weight
    (label != 255), float32 tensors."""
    valid = labels != LABEL_NODATA
    x = (images.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
    x *= valid[:, None]
    if classes:
        target = np.where(valid, labels, 0).astype(np.int64)[:, None]
    else:
        target = ((labels >= 1) & valid).astype(np.float32)[:, None]
    weight = valid.astype(np.float32)[:, None]
    return torch.from_numpy(x), torch.from_numpy(target), torch.from_numpy(weight)

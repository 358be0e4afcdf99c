"""Probability stores ``predictions/{chunk}.kea``: a chunk's predictions over its footprint.

The layout is in ``layout``'s docstring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..formats import kea
from ..geo.grid import PixelBox
from ..storage.paths import atomic_path
from .layout import (
    GROUP,
    PROB_BLOCK_PX,
    PROB_NODATA,
    StorePlace,
    read_header,
    write_dataset,
    write_header,
)


@dataclass(frozen=True)
class ProbStore:
    """A probability store in memory (arrays over ``place.box``, the chunk's footprint)."""

    place: StorePlace
    prob: np.ndarray  # float32 (H, W) in [0, 1], nodata -1; K-class: (K, H, W)
    hits: np.ndarray  # uint8: bit i set where scale i reached ``threshold`` (see layout)
    weight: np.ndarray | None  # float32 window-weight sums (sinusoidal merge); None for max
    threshold: float
    scales: tuple[float, ...]
    tile_ids: np.ndarray | None = None  # bytes (n,): the tiles predicted into it
    classes: tuple[str, ...] = ()  # K-class: the class names (band order); () binary
    colours: tuple[tuple[int, int, int], ...] = ()  # K-class: RGB per class


def write_prob_store(path: Path, store: ProbStore) -> None:
    """Write a probability store atomically (temporary name, then rename)."""
    planes = store.prob.reshape(-1, *store.prob.shape[-2:])  # (1 or K, H, W)
    names = store.classes or ("probability",)
    info = store.place.kea_info(np.float32, len(planes), PROB_NODATA, names)
    info = dataclasses.replace(info, block_size=PROB_BLOCK_PX)
    block = min(PROB_BLOCK_PX, *planes.shape[1:])  # the band's chunk side (kea_layout)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kea.create(f, info)
            for band, plane in enumerate(planes, start=1):
                kea.write_band(f, band, plane.astype(np.float32, copy=False))
            group = write_header(f, "probability", store.place)
            group.attrs["threshold"] = float(store.threshold)
            group.attrs["scales"] = np.asarray(store.scales, dtype=np.float64)
            if store.classes:
                group.attrs["classes"] = list(store.classes)
                group.attrs["class_colours"] = np.asarray(store.colours, dtype=np.uint8)
            valid_box = _valid_box(planes[0], store.place.box)
            group.attrs["valid_box"] = np.asarray(valid_box, dtype=np.int64)
            group.attrs["merge_method"] = "max" if store.weight is None else "sinusoidal"
            write_dataset(group, "scale_hits", store.hits.astype(np.uint8, copy=False), block)
            if store.weight is not None:
                write_dataset(group, "weight", store.weight.astype(np.float32, copy=False), block)
            if not store.classes:  # what vectorize skips by; K-class stores are read whole
                block_max, block_valid = block_summary(store.prob, block)
                group.create_dataset("block_max", data=block_max)
                group.create_dataset("block_valid", data=block_valid)
            if store.tile_ids is not None:
                group.create_group("tiles").create_dataset("tile_id", data=store.tile_ids)


def block_summary(prob: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``block`` px block of ``prob`` (from its top-left): the highest probability (-1 where
    none; nodata is below every probability) and the count of pixels holding one (int32)."""
    rows, cols = np.arange(0, prob.shape[0], block), np.arange(0, prob.shape[1], block)
    # along the rows first: contiguous memory (the other order is ~20x slower on 4k px)
    block_max = np.maximum.reduceat(np.maximum.reduceat(prob, cols, axis=1), rows, axis=0)
    valid = (prob != PROB_NODATA).view(np.uint8)  # summed as bool, it is ~20x slower
    valid = np.add.reduceat(valid, cols, axis=1, dtype=np.int32)
    return block_max.astype(np.float32), np.add.reduceat(valid, rows, axis=0)


def _valid_box(prob: np.ndarray, box: PixelBox) -> PixelBox:
    """Grid-pixel box of the store's pixels that hold a probability (empty box if none)."""
    rows = np.flatnonzero((prob != PROB_NODATA).any(axis=1))
    cols = np.flatnonzero((prob != PROB_NODATA).any(axis=0))
    if rows.size == 0:
        return PixelBox(box.col0, box.row0, box.col0, box.row0)
    return PixelBox(
        box.col0 + int(cols[0]),
        box.row0 + int(rows[0]),
        box.col0 + int(cols[-1]) + 1,
        box.row0 + int(rows[-1]) + 1,
    )


@dataclass(frozen=True)
class ProbWindow:
    """A probability store's values over ``box``: the part of a window it covers (grid px)."""

    box: PixelBox
    prob: np.ndarray  # float32 (h, w), nodata -1; K-class stores: (K, h, w)
    hits: np.ndarray  # uint8 scale bits
    weight: np.ndarray | None  # float32 window-weight sums; None for stores merged by max


def read_prob_window(path: Path, window: PixelBox) -> ProbWindow | None:
    """A store's values where it overlaps ``window``; None when it does not."""
    return read_prob_windows(path, [window])[0]


def read_prob_windows(path: Path, windows: list[PixelBox]) -> list[ProbWindow | None]:
    """``read_prob_window`` for each of ``windows``, the store opened once."""
    out = []
    with kea.open_kea(path) as (f, info):
        box = read_header(f, info, "probability").box
        group = f[GROUP]
        sets = [group["scale_hits"], group.get("weight")]
        for window in windows:
            part = box.intersection(window)
            if part is None:
                out.append(None)
                continue
            rows, cols = part.slices_in(box)
            try:
                prob = _read_probability(f, rows, cols)
                values = [_read(ds, rows, cols) if ds is not None else None for ds in sets]
            except OSError as exc:
                raise kea.kea_error(f, f"cannot read pixels ({exc})") from None
            out.append(ProbWindow(part, prob, *values))
    return out


def _read_probability(f: h5py.File, rows: slice, cols: slice) -> np.ndarray:
    """The probability band (h, w), or for a K-class store its K bands (K, h, w)."""
    if "classes" not in f[GROUP].attrs:
        return _read(kea.band_data(f, 1), rows, cols)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    return kea.read_window(f, rows.start, cols.start, height, width)


@dataclass(frozen=True)
class ProbSummary:
    """A store's block summaries: ``block`` px blocks from its box's top-left (grid px)."""

    box: PixelBox
    block: int
    block_max: np.ndarray  # float32 (block rows, block cols): highest probability, -1 none
    block_valid: np.ndarray  # int32: pixels holding a probability


def read_prob_summary(path: Path) -> ProbSummary | None:
    """The store's block summaries; None for a store written before they were."""
    with kea.open_kea(path) as (f, info):
        box = read_header(f, info, "probability").box
        group = f[GROUP]
        if "block_max" not in group:
            return None
        return ProbSummary(box, info.block_size, group["block_max"][()], group["block_valid"][()])


def _read(ds: h5py.Dataset, rows: slice, cols: slice) -> np.ndarray:
    """``ds[rows, cols]`` read straight into a new native-order array (one copy, not two)."""
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start), ds.dtype.newbyteorder("="))
    ds.read_direct(out, np.s_[rows, cols])
    return out


def read_prob_attrs(path: Path) -> dict[str, object]:
    """Chunk, box, threshold and scales recorded in a probability store."""
    with kea.open_kea(path) as (f, info):
        place = read_header(f, info, "probability")
        attrs = f[GROUP].attrs
        return {
            "chunk": place.chunk,
            "box": place.box,
            "threshold": float(attrs["threshold"]),
            "scales": tuple(float(s) for s in attrs["scales"]),
            "valid_box": PixelBox(*(int(v) for v in attrs["valid_box"])),
            "merge_method": str(attrs.get("merge_method", "max")),
            "classes": [_text(c) for c in attrs.get("classes", [])],
        }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_prob_classes(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """A K-class store's class names and RGB colours; ((), ()) for a binary store."""
    with kea.open_kea(path) as (f, info):
        read_header(f, info, "probability")
        attrs = f[GROUP].attrs
        names = tuple(_text(c) for c in attrs.get("classes", []))
        colours = tuple(tuple(int(v) for v in c) for c in attrs.get("class_colours", []))
        return names, colours  # type: ignore[return-value]


def read_prob_tile_ids(path: Path) -> list[str] | None:
    """The ids of the tiles predicted into a probability store (None: it does not say)."""
    with kea.open_kea(path) as (f, info):
        read_header(f, info, "probability")
        tiles = f[GROUP].get("tiles")
        if tiles is None or "tile_id" not in tiles:
            return None
        return [t.decode() for t in tiles["tile_id"][()]]

"""Probability stores ``predictions/{chunk}.kea``: a chunk's predictions over its footprint.

The layout is in ``layout``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..formats import kea
from ..geo.grid import PixelBox
from ..storage.paths import atomic_path
from .layout import GROUP, PROB_NODATA, StorePlace, read_header, write_dataset, write_header


@dataclass(frozen=True)
class ProbStore:
    """A probability store in memory (arrays over ``place.box``, the chunk's footprint)."""

    place: StorePlace
    prob: np.ndarray  # float32 in [0, 1], nodata -1
    hits: np.ndarray  # uint8: bit i set where scale i reached ``threshold``
    weight: np.ndarray | None  # float32 window-weight sums (sinusoidal merge); None for max
    threshold: float
    scales: tuple[float, ...]
    tile_ids: np.ndarray | None = None  # bytes (n,): the tiles predicted into it


def write_prob_store(path: Path, store: ProbStore) -> None:
    """Write a probability store atomically (temporary name, then rename)."""
    info = store.place.kea_info(np.float32, 1, PROB_NODATA, ("probability",))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kea.create(f, info)
            kea.write_band(f, 1, store.prob.astype(np.float32, copy=False))
            group = write_header(f, "probability", store.place)
            group.attrs["threshold"] = float(store.threshold)
            group.attrs["scales"] = np.asarray(store.scales, dtype=np.float64)
            valid_box = _valid_box(store.prob, store.place.box)
            group.attrs["valid_box"] = np.asarray(valid_box, dtype=np.int64)
            group.attrs["merge_method"] = "max" if store.weight is None else "sinusoidal"
            write_dataset(group, "scale_hits", store.hits.astype(np.uint8, copy=False))
            if store.weight is not None:
                write_dataset(group, "weight", store.weight.astype(np.float32, copy=False))
            if store.tile_ids is not None:
                group.create_group("tiles").create_dataset("tile_id", data=store.tile_ids)


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
    prob: np.ndarray  # float32, nodata -1
    hits: np.ndarray  # uint8 scale bits
    weight: np.ndarray | None  # float32 window-weight sums; None for stores merged by max


def read_prob_window(path: Path, window: PixelBox) -> ProbWindow | None:
    """A store's values where it overlaps ``window``; None when it does not."""
    with kea.open_kea(path) as (f, info):
        box = read_header(f, info, "probability").box
        part = box.intersection(window)
        if part is None:
            return None
        rows, cols = part.slices_in(box)
        prob = kea.read_window(f, rows.start, cols.start, part.height, part.width)[0]
        group = f[GROUP]
        hits = _read(group["scale_hits"], rows, cols)
        weight = _read(group["weight"], rows, cols) if "weight" in group else None
    return ProbWindow(part, prob, hits, weight)


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
        }


def read_prob_tile_ids(path: Path) -> list[str] | None:
    """The ids of the tiles predicted into a probability store (None: it does not say)."""
    with kea.open_kea(path) as (f, info):
        read_header(f, info, "probability")
        tiles = f[GROUP].get("tiles")
        if tiles is None or "tile_id" not in tiles:
            return None
        return [t.decode() for t in tiles["tile_id"][()]]

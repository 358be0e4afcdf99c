"""The training store: every training tile of an experiment in ONE HDF5 file, several
experiments (and folds) reading it.

    /@kind = "training", @crs (WKT), @resolution (CRS units per px), @origin ([x, y] of the
        grid's top-left), @tile_size, @stride (px), @bands, @classes (JSON list of names,
        index k - 1 is class k), @data_version (the content hash, see ``TrainingStoreWriter``)
    /images                  (n, bands, T, T) the input's dtype, one chunk a tile
    /labels                  uint8 (n, T, T): 0 background, k class k, 255 no input data
    /tiles/tile_id           fixed bytes (n,): c{col0 // stride}_r{row0 // stride}
    /tiles/col0, /tiles/row0 int64 (n,): the tile's top-left pixel on the global grid
    /tiles/bounds            float64 (n, 4): minx, miny, maxx, maxy in @crs
    /tiles/fold              int16 (n,): its spatial fold (see ``stages.training_data``)
    /tiles/valid_fraction    float32 (n,): share of its pixels with input data

Tiles are appended in batches (``with TrainingStoreWriter(path, header) as store``); the file
is written under a temporary name and renamed once complete, so a store that exists is whole.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..storage.paths import atomic_path

LABEL_NODATA = 255
_COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=True)


@dataclass(frozen=True)
class TrainingHeader:
    """What every tile of a training store shares (units: px, CRS units)."""

    crs_wkt: str
    resolution: float
    origin: tuple[float, float]
    tile_size: int
    stride: int
    bands: int
    dtype: np.dtype
    classes: tuple[str, ...]


@dataclass(frozen=True)
class TileBatch:
    """Tiles to append: images (n, bands, T, T), labels (n, T, T) uint8 and their table."""

    images: np.ndarray
    labels: np.ndarray
    col0: np.ndarray  # int64 (n,) grid px
    row0: np.ndarray
    bounds: np.ndarray  # float64 (n, 4)
    fold: np.ndarray  # int16 (n,)
    valid_fraction: np.ndarray  # float32 (n,)


class TrainingStoreWriter:
    """Appends batches to a new store at ``path``; ``data_version`` is the SHA-256 of the
    tiles' pixels, labels and table in order (not of the compressed bytes), so the same
    tiles give the same version whatever HDF5 writes."""

    def __init__(self, path: Path, header: TrainingHeader) -> None:
        self.header, self.count, self._hash = header, 0, hashlib.sha256()
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        t, b = header.tile_size, header.bands
        f = self._file
        f.create_dataset("images", (0, b, t, t), header.dtype, maxshape=(None, b, t, t),
                         chunks=(1, b, t, t), **_COMPRESSION)  # fmt: skip
        f.create_dataset("labels", (0, t, t), np.uint8, maxshape=(None, t, t),
                         chunks=(1, t, t), **_COMPRESSION)  # fmt: skip
        tiles = f.create_group("tiles")
        for name, dtype, width in _TABLE:
            shape = (0, width) if width else (0,)
            tiles.create_dataset(name, shape, dtype, maxshape=(None, *shape[1:]), chunks=True)

    def append(self, batch: TileBatch) -> None:
        n = len(batch.images)
        if n == 0:
            return
        ids = [f"c{c // self.header.stride}_r{r // self.header.stride}".encode()
               for c, r in zip(batch.col0.tolist(), batch.row0.tolist(), strict=True)]  # fmt: skip
        values = {"images": batch.images, "labels": batch.labels}
        table = {"tile_id": np.array(ids, dtype="S32"), "col0": batch.col0,
                 "row0": batch.row0, "bounds": batch.bounds, "fold": batch.fold,
                 "valid_fraction": batch.valid_fraction}  # fmt: skip
        for name, data in [*values.items(), *(("tiles/" + k, v) for k, v in table.items())]:
            ds = self._file[name]
            ds.resize(self.count + n, axis=0)
            ds[self.count :] = data
            self._hash.update(np.ascontiguousarray(data, dtype=ds.dtype).tobytes())
        self.count += n

    @property
    def data_version(self) -> str:
        return "sha256:" + self._hash.hexdigest()[:16]

    def __enter__(self) -> TrainingStoreWriter:
        return self

    def __exit__(self, *exc) -> bool | None:
        """Complete: the header written and the store renamed into place. On an exception:
        the temporary file removed, nothing left at ``path``."""
        if exc[0] is None:
            h = self.header
            self._file.attrs.update(kind="training", crs=h.crs_wkt, resolution=h.resolution,
                                    origin=np.asarray(h.origin), tile_size=h.tile_size,
                                    stride=h.stride, bands=h.bands,
                                    classes=json.dumps(list(h.classes)),
                                    data_version=self.data_version)  # fmt: skip
        return self._stack.__exit__(*exc)


_TABLE = [
    ("tile_id", "S32", 0),
    ("col0", np.int64, 0),
    ("row0", np.int64, 0),
    ("bounds", np.float64, 4),
    ("fold", np.int16, 0),
    ("valid_fraction", np.float32, 0),
]


class BandStats:
    """Per-band count, mean and sum of squared deviations of valid pixels, merged batch by
    batch (Chan et al.'s pairwise update, in float64): exact to float64 rounding for data
    larger than memory."""

    def __init__(self, bands: int) -> None:
        self.count = np.zeros(bands, dtype=np.int64)
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)

    def update(self, images: np.ndarray, valid: np.ndarray) -> None:
        """Add the pixels of ``images`` (n, bands, T, T) where ``valid`` (n, T, T) is True."""
        for b in range(images.shape[1]):
            x = images[:, b][valid].astype(np.float64)
            if x.size == 0:
                continue
            n, mean = x.size, x.mean()
            m2 = float(((x - mean) ** 2).sum())
            total = self.count[b] + n
            delta = mean - self.mean[b]
            self.mean[b] += delta * n / total
            self.m2[b] += m2 + delta**2 * self.count[b] * n / total
            self.count[b] = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (numpy's default, ddof 0)."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))

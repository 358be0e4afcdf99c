"""``create_training_data.py``: your rasters and label polygons -> one training store.

``train.rasters`` are read onto the experiment's grid lattice exactly as predict's inputs are
(``geo.sources``: copied when aligned, warped otherwise), and ``train.labels`` are rasterized
on the same lattice (pixel centres; where polygons overlap the later one wins): class k for a
polygon of the k-th name of ``train.class_column`` (sorted), else 1; 0 elsewhere; 255 where
the input has no data. Training tiles are ``grid.tile_size`` squares whose top-left pixels
are multiples of ``train.stride`` (default ``grid.stride``) on the global grid and that lie
inside ``train.aoi`` (default: the rasters' footprint), at least one pixel valid. Each tile's
fold is ``(block col + 2 * block row) % train.folds`` over square blocks of
``train.fold_block_px``: neighbouring blocks never share a fold.

Written: the store (``stores.training_store``, at ``train.store``) and beside it
``normalization_stats.json``: per-band ``mean`` and ``std`` of every stored tile's valid
pixels (input units, tiles overlapping count each time, as training sees them) and the
store's ``data_version``. A store made from the same files and settings is kept as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from numpy.lib.stride_tricks import sliding_window_view
from rasterio import features
from rasterio.crs import CRS

from ..config import Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..geo.grid import PixelBox, TileGrid
from ..geo.sources import InputRaster, open_inputs, read_box
from ..run.manifest import digest
from ..storage.paths import atomic_path
from ..stores.training_store import (
    LABEL_NODATA,
    BandStats,
    TileBatch,
    TrainingHeader,
    TrainingStoreWriter,
)

log = logging.getLogger(__name__)
WINDOW_STRIDES = 8  # tiles are cut from windows of this many strides a side, read at once
STATS_NAME = "normalization_stats.json"
STORE_KEYS = "rasters labels label_layer class_column aoi stride folds fold_block_px store".split()


def create_training_data(exp: Experiment, force: bool = False) -> dict[str, object]:
    """Write the training store and its statistics (see the module); returns what it wrote."""
    t, grid = exp.train, TileGrid.from_experiment(exp)
    if not t.rasters or t.labels is None:
        raise DeepSegError(
            f"{exp.source}: create_training_data needs train.rasters and train.labels"
        )
    source = dataclasses.replace(exp, input=dataclasses.replace(exp.input, rasters=t.rasters))
    inputs = open_inputs(source, grid)
    labels, classes = read_labels(t.labels, t.label_layer, t.class_column, exp.crs)
    settings = {k: getattr(t, k) for k in STORE_KEYS}  # not the training's own settings
    made_from = digest(_identities(t), settings, dataclasses.asdict(exp.grid), exp.crs,
                       exp.input.bands, exp.input.nodata, exp.input.resampling)  # fmt: skip
    stats_path = t.store.parent / STATS_NAME
    if not force and _made_from(stats_path) == made_from and t.store.exists():
        log.info("training data: %s is up to date (made from the same files and settings)", t.store)
        return json.loads(stats_path.read_text())
    aoi = _aoi(t.aoi, inputs, grid, exp.crs)
    origins = tile_origins(aoi, grid, t.stride or grid.stride)
    header = TrainingHeader(
        CRS.from_user_input(exp.crs).to_wkt(), grid.resolution, (grid.origin_x, grid.origin_y),
        grid.tile_size, t.stride or grid.stride, len(exp.input.bands), inputs[0].dtype, classes,
    )  # fmt: skip
    stats = BandStats(header.bands)
    t.store.parent.mkdir(parents=True, exist_ok=True)
    with TrainingStoreWriter(t.store, header) as store:
        groups = _windows(origins, header.stride)
        for group in progress(groups, len(groups), "training data: windows", log):
            batch, valid = _cut(group, inputs, source, grid, labels, t.folds, t.fold_block_px)
            store.append(batch)
            stats.update(batch.images, valid)
    result = {"mean": stats.mean.round(6).tolist(), "std": stats.std.round(6).tolist(),
              "data_version": store.data_version, "tiles": store.count,
              "classes": list(classes), "store": str(t.store), "made_from": made_from}  # fmt: skip
    with atomic_path(stats_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("training data: %d tile(s) -> %s (%s)", store.count, t.store, store.data_version)
    return result


def read_labels(
    path: Path, layer: str | None, column: str | None, crs: str
) -> tuple[gpd.GeoDataFrame, tuple[str, ...]]:
    """Label polygons in ``crs`` with their class index (column ``class_id``) and the class
    names (index k - 1 is class k)."""
    if not path.is_file():
        raise DeepSegError(f"train.labels: {path} does not exist")
    frame = gpd.read_file(path, layer=layer)
    if frame.crs is None:
        raise DeepSegError(f"train.labels: {path} has no CRS; set one (e.g. with ogr2ogr -a_srs)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].to_crs(crs)
    if column is None:
        return frame.assign(class_id=np.uint8(1)), ("rts",)
    if column not in frame.columns:
        raise DeepSegError(
            f"train.labels: {path} has no column {column!r} (train.class_column); it has "
            f"{', '.join(c for c in frame.columns if c != 'geometry')}"
        )
    names = tuple(sorted(frame[column].astype(str).unique()))
    if len(names) > 254:
        raise DeepSegError(f"train.labels: {len(names)} classes in {column!r}; at most 254")
    ids = {n: i + 1 for i, n in enumerate(names)}
    return frame.assign(class_id=frame[column].astype(str).map(ids).astype(np.uint8)), names


def tile_origins(aoi: shapely.Geometry, grid: TileGrid, stride: int) -> np.ndarray:
    """(n, 2) top-left grid pixels (col, row) of the tiles inside ``aoi``, multiples of
    ``stride``, in raster order."""
    box, t = grid.box_of_bounds(aoi.bounds), grid.tile_size
    cols = np.arange(-(-box.col0 // stride) * stride, box.col1 - t + 1, stride)
    rows = np.arange(-(-box.row0 // stride) * stride, box.row1 - t + 1, stride)
    origins = np.stack(np.meshgrid(cols, rows), -1).reshape(-1, 2).astype(np.int64)
    res, ox, oy = grid.resolution, grid.origin_x, grid.origin_y
    x0, y1 = ox + origins[:, 0] * res, oy - origins[:, 1] * res
    inside = shapely.covers(aoi, shapely.box(x0, y1 - t * res, x0 + t * res, y1))
    return origins[inside]


def _aoi(path: Path | None, inputs: list[InputRaster], grid: TileGrid, crs: str):
    if path is None:
        return shapely.union_all([shapely.box(*grid.bounds(r.box)) for r in inputs])
    if not path.is_file():
        raise DeepSegError(f"train.aoi: {path} does not exist")
    return shapely.union_all(gpd.read_file(path).to_crs(crs).geometry.values)


def _windows(origins: np.ndarray, stride: int) -> list[np.ndarray]:
    """The origins grouped by windows of WINDOW_STRIDES strides (raster order kept)."""
    key = origins // (WINDOW_STRIDES * stride)
    order = np.lexsort((key[:, 0], key[:, 1]))
    cuts = np.flatnonzero(np.any(np.diff(key[order], axis=0) != 0, axis=1)) + 1
    return np.split(origins[order], cuts) if len(origins) else []


def _cut(group, inputs, exp, grid, labels, folds: int, block_px: int):
    """The tiles of one window: read once, labels burnt once, cut with numpy."""
    t = grid.tile_size
    window = PixelBox(int(group[:, 0].min()), int(group[:, 1].min()),
                      int(group[:, 0].max()) + t, int(group[:, 1].max()) + t)  # fmt: skip
    pixels, valid = read_box(inputs, exp, grid, window)
    burnt = _burn(labels, grid, window)
    burnt[~valid] = LABEL_NODATA
    cols, rows = group[:, 0] - window.col0, group[:, 1] - window.row0
    tiles_valid = _tiles(valid, rows, cols, t)
    keep = tiles_valid.any(axis=(1, 2))
    cols, rows, group, tiles_valid = cols[keep], rows[keep], group[keep], tiles_valid[keep]
    res, ox, oy = grid.resolution, grid.origin_x, grid.origin_y
    x0, y1 = ox + group[:, 0] * res, oy - group[:, 1] * res
    block = group // block_px
    batch = TileBatch(
        images=_tiles(pixels, rows, cols, t).swapaxes(0, 1),
        labels=_tiles(burnt, rows, cols, t),
        col0=group[:, 0],
        row0=group[:, 1],
        bounds=np.column_stack([x0, y1 - t * res, x0 + t * res, y1]),
        fold=((block[:, 0] + 2 * block[:, 1]) % folds).astype(np.int16),
        valid_fraction=tiles_valid.mean(axis=(1, 2)).astype(np.float32),
    )
    return batch, tiles_valid


def _tiles(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, t: int) -> np.ndarray:
    """The ``t`` x ``t`` squares of ``array`` (..., H, W) at (rows, cols): (..., n, t, t)."""
    return sliding_window_view(array, (t, t), axis=(-2, -1))[..., rows, cols, :, :].copy()


def _burn(labels: gpd.GeoDataFrame, grid: TileGrid, window: PixelBox) -> np.ndarray:
    """Class ids of the polygons over ``window`` (pixel centres), 0 elsewhere."""
    out = np.zeros((window.height, window.width), dtype=np.uint8)
    near = labels.iloc[labels.sindex.query(shapely.box(*grid.bounds(window)))].sort_index()
    if len(near):
        shapes = zip(near.geometry.values, near.class_id.tolist(), strict=True)
        features.rasterize(shapes, out=out, transform=grid.transform(window))
    return out


def _identities(t) -> list:
    """What the store is made from on disk: each file's path, size and modification time."""
    files = [*t.rasters, t.labels, t.aoi]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files
            if isinstance(f, Path) and f.exists()]  # fmt: skip


def _made_from(stats_path: Path) -> str | None:
    try:
        return json.loads(stats_path.read_text()).get("made_from")
    except (OSError, ValueError):
        return None

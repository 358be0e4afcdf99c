"""Streaming a region's merged rasters for evaluation: pixel counts and where polygons fall.

The probability and binary COGs of a region are read one internal block (512 x 512 px) at a
time; the reference polygons (found through an STRtree) and the area of interest are burnt
per block, so memory stays flat however large the region is. A pixel is *evaluated* when its
probability is valid (not nodata) and its centre lies in the AOI (no AOI: every valid
pixel); it is a *reference pixel* when its centre lies in a reference polygon (GDAL's
rasterize rule). Coordinates are those of the rasters, the experiment's ``crs``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import bounds

from ..core.errors import DeepSegError
from ..core.progress import progress
from .metrics import PixelTally

log = logging.getLogger(__name__)


class PointFinder:
    """Representative points of polygons, assigned to the first region where they fall on an
    evaluated pixel (``region[i]`` None until then)."""

    def __init__(self, geoms: np.ndarray) -> None:
        points = shapely.point_on_surface(geoms)
        self.x, self.y = shapely.get_x(points), shapely.get_y(points)
        self.region = np.full(len(geoms), None, dtype=object)
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def start_region(self, src: rasterio.DatasetReader) -> None:
        """Index the points not yet placed by the internal block of ``src`` holding them."""
        inv = ~src.transform  # map -> pixel, applied to the coordinate arrays
        cols, rows = (
            inv.a * self.x + inv.b * self.y + inv.c,
            inv.d * self.x + inv.e * self.y + inv.f,
        )
        rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        todo = np.flatnonzero(inside & pd.isna(self.region))
        block_h, block_w = src.block_shapes[0]
        rows, cols = rows[todo], cols[todo]
        table = pd.DataFrame({"row": rows // block_h, "col": cols // block_w})
        self._blocks = {
            (int(row), int(col)): (todo[i], rows[i] % block_h, cols[i] % block_w)
            for (row, col), i in table.groupby(["row", "col"]).indices.items()
        }

    def visit(self, region: str, block: tuple[int, int], evaluated: np.ndarray) -> None:
        """Place the points of ``block`` that fall on its evaluated pixels in ``region``."""
        if block in self._blocks:
            i, rows, cols = self._blocks[block]
            self.region[i[evaluated[rows, cols]]] = region


def _valid(prob: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels holding a probability: not nodata, not NaN."""
    valid = ~np.isnan(prob)
    if nodata is not None:
        valid &= prob != nodata
    return valid


def _burn(geoms: np.ndarray, window_transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of ``shape`` whose centre lies in one of ``geoms`` (boolean)."""
    if len(geoms) == 0:
        return np.zeros(shape, dtype=bool)
    return rasterize(geoms, shape, transform=window_transform, dtype=np.uint8) > 0


def _aoi_mask(
    aoi: shapely.Geometry, box: tuple[float, ...], window_transform: Affine, shape: tuple[int, int]
) -> np.ndarray:
    """Pixels of the block ``box`` (minx, miny, maxx, maxy) whose centre lies in the AOI."""
    cell = shapely.box(*box)
    if shapely.contains(aoi, cell):
        return np.ones(shape, dtype=bool)
    if not shapely.intersects(aoi, cell):
        return np.zeros(shape, dtype=bool)
    return _burn(np.array([shapely.clip_by_rect(aoi, *box)]), window_transform, shape)


def scan_region(
    name: str,
    prob_path: Path,
    binary_path: Path,
    references: np.ndarray,
    aoi: shapely.Geometry | None,
    finders: list[PointFinder],
) -> tuple[PixelTally, float]:
    """Pixel counts of one region, block by block, and its pixel area in m²."""
    tree = shapely.STRtree(references)
    tally = PixelTally()
    with rasterio.open(prob_path) as prob_src, rasterio.open(binary_path) as bin_src:
        if (prob_src.shape, prob_src.transform) != (bin_src.shape, bin_src.transform):
            raise DeepSegError(f"{binary_path}: not on {prob_path}'s grid; rerun merge.py --force")
        for finder in finders:
            finder.start_region(prob_src)
        block_h, block_w = prob_src.block_shapes[0]
        total = -(-prob_src.height // block_h) * -(-prob_src.width // block_w)
        blocks = prob_src.block_windows(1)  # lazily: a region may hold millions of blocks
        for block, window in progress(blocks, total, f"evaluate {name}: blocks", log):
            box = bounds(window, prob_src.transform)
            transform = prob_src.window_transform(window)
            shape = (window.height, window.width)
            in_aoi = None if aoi is None else _aoi_mask(aoi, box, transform, shape)
            if in_aoi is not None and not in_aoi.any():
                continue  # outside the AOI: nothing to read
            prob = prob_src.read(1, window=window)
            evaluated = _valid(prob, prob_src.nodata)
            if in_aoi is not None:
                evaluated &= in_aoi
            for finder in finders:
                finder.visit(name, block, evaluated)
            if not evaluated.any():
                continue
            predicted = bin_src.read(1, window=window) == 1
            truth = _burn(references[tree.query(shapely.box(*box))], transform, prob.shape)
            tally.add(prob[evaluated], predicted[evaluated], truth[evaluated])
        pixel_m2 = abs(prob_src.res[0] * prob_src.res[1])
    return tally, pixel_m2

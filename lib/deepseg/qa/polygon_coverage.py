"""Polygons against the predicted area: the check's ``polygons_outside_predicted_area``.

A polygon's area outside the predicted area is its part beyond every probability store, plus
its pixels (centre inside) that are nodata in the fused map, assembled one chunk core at a time,
in m² of the experiment's ``crs``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import shapely
from rasterio import features

from ..config import Experiment
from ..core.progress import progress
from ..geo.grid import PixelBox, TileGrid
from ..stages.assembly import StoreIndex, assemble
from ..stages.vectorize import LAYER
from ..storage.paths import RunPaths
from ..stores.layout import PROB_NODATA
from .references import read_polygons

log = logging.getLogger(__name__)


def _polygons_by_core(
    geoms: np.ndarray, grid: TileGrid, extent: PixelBox
) -> dict[tuple[int, int], list[int]]:
    """Chunk (col, row) -> indices of the polygons reaching its core inside ``extent``."""
    n, cores = grid.chunk_px, defaultdict(list)
    for i, geom in enumerate(geoms):
        box = grid.box_of_bounds(geom.bounds).intersection(extent)
        if box is not None:
            for row in range(box.row0 // n, (box.row1 - 1) // n + 1):
                for col in range(box.col0 // n, (box.col1 - 1) // n + 1):
                    cores[(col, row)].append(i)
    return cores


def _nodata_px(geom: shapely.Geometry, grid: TileGrid, box: PixelBox, nodata: np.ndarray) -> int:
    """Pixels of ``box`` whose centre is inside ``geom`` and that are ``nodata``."""
    part = grid.box_of_bounds(geom.bounds).intersection(box)
    if part is None:
        return 0
    shape = (part.height, part.width)
    inside = features.rasterize([geom], shape, transform=grid.transform(part)) == 1
    return int((inside & nodata[part.slices_in(box)]).sum())


def polygons_outside(
    exp: Experiment, paths: RunPaths, grid: TileGrid, index: StoreIndex
) -> list[dict[str, Any]]:
    """The polygons with area (m²) where nothing was predicted: beyond every store, plus
    their pixels that are nodata in the fused map (assembled one chunk core at a time)."""
    frame = read_polygons(paths.local(paths.polygons), LAYER, exp.crs, "predicted")
    geoms, extent = frame.geometry.values, index.extent()
    covered = shapely.box(*grid.bounds(extent))
    outside_m2 = shapely.area(geoms) - shapely.area(shapely.intersection(geoms, covered))
    nodata_px = np.zeros(len(geoms), dtype=np.int64)
    cores = _polygons_by_core(np.asarray(geoms), grid, extent)
    for core, members in progress(sorted(cores.items()), len(cores), "check: polygons", log):
        box = grid.chunk_core(*core).intersection(extent)
        nodata = assemble(grid, index, box)[0] == PROB_NODATA
        if nodata.any():
            for i in members:
                nodata_px[i] += _nodata_px(geoms[i], grid, box, nodata)
    outside_m2 = outside_m2 + nodata_px * grid.resolution**2
    return [
        {"rts_id": frame["rts_id"].iloc[i], "outside_m2": round(float(outside_m2[i]), 3)}
        for i in np.flatnonzero(outside_m2 > 1e-6 * grid.resolution**2)
    ]

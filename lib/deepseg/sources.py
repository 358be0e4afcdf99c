"""Reading the input rasters onto the grid's pixel lattice, one box of pixels at a time.

An input whose CRS, resolution and pixel lattice match the grid is copied bit for bit; any
other is warped on the fly (GDAL warper through rasterio's ``WarpedVRT``, exact transformer,
``input.resampling``). Several inputs form one mosaic: where they overlap, the first listed
input with valid data wins. A pixel is valid when at least one band differs from nodata
(``input.nodata``, else the file's own nodata tag, else the file's mask) and no band is NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .config import Experiment
from .errors import DeepSegError
from .grid import PixelBox, TileGrid
from .storage import readable_rasters

log = logging.getLogger(__name__)
LATTICE_TOLERANCE_PX = 1e-6
WARP_TOLERANCE_PX = 1e-9


@dataclass(frozen=True)
class InputRaster:
    """One input file as the grid sees it."""

    path: Path
    nodata: float | None  # the value that marks invalid pixels, or None (use the file's mask)
    dtype: np.dtype
    box: PixelBox  # grid pixels covering the file's footprint
    offset: tuple[int, int] | None  # (col, row) of the file's pixel (0, 0) in the grid when
    # the file is on the grid lattice; None when it must be warped


def open_inputs(exp: Experiment, grid: TileGrid) -> list[InputRaster]:
    """Open and check every input raster; a broken one stops with a line naming it."""
    inputs = [_describe(path, exp, grid) for path in readable_rasters(exp)]
    dtypes = {r.dtype for r in inputs}
    if len(dtypes) > 1:
        names = ", ".join(f"{r.path.name}={r.dtype}" for r in inputs)
        raise DeepSegError(f"input.rasters: all inputs must share one data type, got {names}")
    return inputs


def _describe(path: Path, exp: Experiment, grid: TileGrid) -> InputRaster:
    try:
        with rasterio.open(path) as src:
            return _check(src, path, exp, grid)
    except RasterioError as exc:
        raise DeepSegError(f"{path}: cannot read this raster ({exc}); check the file") from exc


def _check(src: rasterio.DatasetReader, path: Path, exp: Experiment, grid: TileGrid) -> InputRaster:
    bands = exp.input.bands
    if max(bands) > src.count:
        raise DeepSegError(
            f"{path}: input.bands asks for band {max(bands)} but the file has {src.count} band(s)"
        )
    if src.crs is None:
        raise DeepSegError(f"{path}: the raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise DeepSegError(f"{path}: rotated rasters are not supported; warp it north-up first")
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise DeepSegError(f"{path}: bands {list(bands)} have different data types {dtypes}")
    nodata = exp.input.nodata if exp.input.nodata is not None else src.nodata
    bounds = transform_bounds(src.crs, CRS.from_user_input(exp.crs), *src.bounds, densify_pts=21)
    offset = _lattice_offset(src, exp.crs, grid)
    if offset is None:
        log.info(
            "%s is not on the grid lattice: it will be warped (%s)", path.name, exp.input.resampling
        )
    return InputRaster(path, nodata, np.dtype(dtypes.pop()), grid.box_of_bounds(bounds), offset)


def _lattice_offset(
    src: rasterio.DatasetReader, crs: str, grid: TileGrid
) -> tuple[int, int] | None:
    """Grid (col, row) of the file's pixel (0, 0) if the file is on the grid lattice, else None."""
    t, res = src.transform, grid.resolution
    if src.crs != CRS.from_user_input(crs):
        return None
    if abs(t.a - res) > LATTICE_TOLERANCE_PX * res or abs(t.e + res) > LATTICE_TOLERANCE_PX * res:
        return None
    col = (t.c - grid.origin_x) / res
    row = (grid.origin_y - t.f) / res
    if abs(col - round(col)) > LATTICE_TOLERANCE_PX or abs(row - round(row)) > LATTICE_TOLERANCE_PX:
        return None
    return round(col), round(row)


def read_box(
    inputs: list[InputRaster], exp: Experiment, grid: TileGrid, box: PixelBox
) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic's pixels over ``box``: (bands, h, w) values and an (h, w) boolean valid mask.

    Invalid pixels hold the first input's nodata value (0 when it has none).
    """
    bands = len(exp.input.bands)
    fill = inputs[0].nodata if inputs[0].nodata is not None else 0
    pixels = np.full((bands, box.height, box.width), fill, dtype=inputs[0].dtype)
    valid = np.zeros((box.height, box.width), dtype=bool)
    for raster in inputs:
        part = raster.box.intersection(box)
        if part is None or valid[part.slices_in(box)].all():
            continue
        values, mask = _read_one(raster, exp, grid, part)
        take = mask & ~valid[part.slices_in(box)]
        rows, cols = part.slices_in(box)
        pixels[:, rows, cols][:, take] = values[:, take]
        valid[rows, cols] |= take
    pixels[:, ~valid] = fill
    return pixels, valid


def _read_one(
    raster: InputRaster, exp: Experiment, grid: TileGrid, box: PixelBox
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with rasterio.open(raster.path) as src:
            if raster.offset is not None:
                return _read_aligned(src, raster, exp, box)
            return _read_warped(src, raster, exp, grid, box)
    except RasterioError as exc:
        raise DeepSegError(f"{raster.path}: read failed over grid pixels {box} ({exc})") from exc


def _read_aligned(
    src: rasterio.DatasetReader, raster: InputRaster, exp: Experiment, box: PixelBox
) -> tuple[np.ndarray, np.ndarray]:
    """Copy the file's own pixels (no resampling); pixels beyond the file are invalid."""
    ox, oy = raster.offset  # type: ignore[misc]
    file_box = PixelBox(ox, oy, ox + src.width, oy + src.height)
    values = np.zeros((len(exp.input.bands), box.height, box.width), dtype=raster.dtype)
    valid = np.zeros((box.height, box.width), dtype=bool)
    inner = file_box.intersection(box)
    if inner is None:
        return values, valid
    window = Window(inner.col0 - ox, inner.row0 - oy, inner.width, inner.height)
    data = src.read(list(exp.input.bands), window=window)
    rows, cols = inner.slices_in(box)
    values[:, rows, cols] = data
    valid[rows, cols] = _valid_mask(data, raster.nodata, src, exp, window)
    return values, valid


def _read_warped(
    src: rasterio.DatasetReader,
    raster: InputRaster,
    exp: Experiment,
    grid: TileGrid,
    box: PixelBox,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the file onto the grid lattice over ``box``; pixels it does not reach are invalid."""
    options = dict(
        crs=CRS.from_user_input(exp.crs),
        transform=grid.transform(box),
        width=box.width,
        height=box.height,
        resampling=Resampling[exp.input.resampling],
        # Values must not depend on how the grid is chunked, so no approximate transformer:
        # rasterio 1.4 refuses tolerance=0, and at 1e-9 px GDAL's approximation is exact.
        tolerance=WARP_TOLERANCE_PX,
        add_alpha=raster.nodata is None,
    )
    if raster.nodata is not None:
        options.update(src_nodata=raster.nodata, nodata=raster.nodata)
    with WarpedVRT(src, **options) as vrt:
        data = vrt.read(list(exp.input.bands))
        if raster.nodata is None:
            valid = vrt.read_masks(1) > 0
        else:
            valid = _valid_mask(data, raster.nodata, None, exp, None)
    return data, valid


def _valid_mask(
    data: np.ndarray,
    nodata: float | None,
    src: rasterio.DatasetReader | None,
    exp: Experiment,
    window: Window | None,
) -> np.ndarray:
    """Valid where any band differs from nodata (or the file's mask says so) and none is NaN."""
    if nodata is not None and not np.isnan(nodata):
        valid = (data != np.asarray(nodata, dtype=data.dtype)).any(axis=0)
    elif src is not None:
        valid = src.read_masks(list(exp.input.bands), window=window).any(axis=0)
    else:
        valid = np.ones(data.shape[1:], dtype=bool)
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).any(axis=0)
    return valid

"""Reading the input rasters onto the grid's pixel lattice, one box of pixels at a time.

An input whose CRS, resolution and pixel lattice match the grid is copied bit for bit; any
other is warped on the fly (GDAL's warper, exact transformer, ``input.resampling``, one fixed
resampling scale per input so values do not depend on the chunking). Inputs may be any format
GDAL reads, or KEA (see ``readers``). Several inputs form one mosaic: where they overlap, the
first listed input with valid data wins. A pixel is valid when at least one band differs from
nodata (``input.nodata``, else the file's own nodata, else the file's mask) and no band is NaN.

Invalid georeferencing stops the run with a line naming the file: no CRS, no usable
geotransform, rotation, and non-square pixels in a projected CRS (``_check_square``). An input
on another lattice, CRS or resolution is not invalid: it is warped (that is what lets any
mosaic feed the global grid). The grid that must align is the run's own: tile stores staged
under other ``grid.*`` settings are refused by predict (``stores.layout.check_on_grid``), a
tile list made for another grid by create_tiles (``tile_list.read_tile_list``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform, transform_bounds
from rasterio.windows import Window

from ..config import Experiment
from ..core.errors import DeepSegError
from ..storage.cache import readable_rasters
from .grid import PixelBox, TileGrid
from .readers import RasterReader, WarpTarget, open_reader

log = logging.getLogger(__name__)
LATTICE_TOLERANCE_PX = 1e-6  # also absorbs KEA pixel sizes stored at float32 precision
NON_SQUARE_TOLERANCE = 1e-3  # relative difference of a pixel's width and height (see below)
MAX_BOX_GROWTH = 1e4  # most grid pixels a warped footprint's box may span per file pixel


@dataclass(frozen=True)
class InputRaster:
    """One input file as the grid sees it."""

    path: Path
    nodata: float | None  # the value that marks invalid pixels, or None (use the file's mask)
    dtype: np.dtype
    box: PixelBox  # grid pixels covering the file's footprint
    offset: tuple[int, int] | None  # (col, row) of the file's pixel (0, 0) in the grid when
    # the file is on the grid lattice; None when it must be warped
    descriptions: tuple[str, ...] = ()  # of the bands read (``input.bands``), "" where unset
    warp_scale: tuple[float, float] = (1.0, 1.0)  # grid pixels per file pixel along x and y


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
        with open_reader(path) as src:
            return _check(src, exp, grid)
    except RasterioError as exc:
        raise DeepSegError(f"{path}: cannot read this raster ({exc}); check the file") from exc


def _check(src: RasterReader, exp: Experiment, grid: TileGrid) -> InputRaster:
    path, bands = src.path, exp.input.bands
    if max(bands) > src.count:
        raise DeepSegError(
            f"{path}: input.bands asks for band {max(bands)} but the file has {src.count} band(s)"
        )
    if src.crs is None:
        raise DeepSegError(f"{path}: the raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise DeepSegError(f"{path}: rotated rasters are not supported; warp it north-up first")
    if t == Affine.identity() or not all(map(math.isfinite, t)) or t.a == 0 or t.e == 0:
        raise DeepSegError(
            f"{path}: the raster has no usable geotransform (pixel size {t.a} x {t.e} at "
            f"({t.c}, {t.f})); georeference it (e.g. gdal_edit.py -a_ullr)"
        )
    _check_square(src, exp, grid)
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise DeepSegError(f"{path}: bands {list(bands)} have different data types {dtypes}")
    nodata = exp.input.nodata if exp.input.nodata is not None else _file_nodata(src, bands)
    crs = CRS.from_user_input(exp.crs)
    offset = _lattice_offset(src, crs, grid)
    if offset is not None:
        box, scale = PixelBox(*offset, offset[0] + src.width, offset[1] + src.height), (1.0, 1.0)
    else:
        scale = _warp_scale(src, crs, grid)
        box = _warped_box(src, crs, grid, scale)
        how = f"{exp.input.resampling}, {scale[0]:.4g} x {scale[1]:.4g} grid px per file px"
        log.info("%s is not on the grid lattice: it will be warped (%s)", path.name, how)
    descriptions = tuple(src.descriptions[b - 1] for b in bands)
    return InputRaster(path, nodata, dtypes.pop(), box, offset, descriptions, scale)


def _check_square(src: RasterReader, exp: Experiment, grid: TileGrid) -> None:
    """Refuse non-square pixels in a projected CRS (unless ``input.non_square_pixels: warp``).

    The warp would handle them, but in metres a pixel whose width and height differ by more
    than ``NON_SQUARE_TOLERANCE`` is almost always a georeferencing mistake (a wrong
    ``-a_ullr`` or ``-tr``), and a mosaic stretched by it would put every detection in the
    wrong place. Slightly unequal sizes, as reprojection leaves them (1e-5), pass. Geographic
    rasters are exempt: pixels of unequal degrees are a common, deliberate layout there.
    """
    width, height = abs(src.transform.a), abs(src.transform.e)
    if src.crs.is_geographic or exp.input.non_square_pixels == "warp":
        return
    if abs(width - height) <= NON_SQUARE_TOLERANCE * max(width, height):
        return
    raise DeepSegError(
        f"{src.path}: non-square pixels ({width:.6g} x {height:.6g} CRS units); fix its "
        f"georeferencing, or warp it to the grid first (gdalwarp -t_srs {exp.crs} -tr "
        f"{grid.resolution:g} {grid.resolution:g} -r {exp.input.resampling} IN OUT), or set "
        "input.non_square_pixels: warp to let DeepSeg warp it"
    )


def _file_nodata(src: RasterReader, bands: tuple[int, ...]) -> float | None:
    """The file's nodata for the bands read; one value, as a tile store has one."""
    values = {src.nodata[b - 1] for b in bands}
    if len(values) > 1 and not all(v is not None and np.isnan(v) for v in values):
        shown = ", ".join(f"band {b}: {src.nodata[b - 1]}" for b in bands)
        raise DeepSegError(
            f"{src.path}: the bands read have different nodata values ({shown}); set "
            "input.nodata to the value that marks invalid pixels"
        )
    return values.pop()


def _warped_box(
    src: RasterReader, crs: CRS, grid: TileGrid, scale: tuple[float, float]
) -> PixelBox:
    """Grid pixels covering the file's footprint once warped into ``crs``.

    A footprint reaching where ``crs`` breaks down (a polar projection's antipode) maps to a
    box far larger than the file: refused, naming the file, rather than tiled forever.
    """
    w, h = src.width, src.height
    (x0, x1), (y0, y1) = zip(src.transform @ (0, 0), src.transform @ (w, h), strict=True)
    try:
        bounds = transform_bounds(
            src.crs, crs, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), densify_pts=21
        )
    except (RasterioError, ValueError) as exc:
        raise DeepSegError(f"{src.path}: its footprint cannot be mapped to {crs} ({exc})") from exc
    box = grid.box_of_bounds(bounds) if all(map(math.isfinite, bounds)) else None
    expected_px = max(1.0, w * scale[0]) * max(1.0, h * scale[1])
    if box is None or box.width * box.height > MAX_BOX_GROWTH * expected_px:
        raise DeepSegError(
            f"{src.path}: its footprint does not map to a sensible area of {crs.to_string()} "
            f"(bounds {bounds}); part of it lies where that projection breaks down: crop the "
            "raster to the area the grid covers"
        )
    return box


def _warp_scale(src: RasterReader, crs: CRS, grid: TileGrid) -> tuple[float, float]:
    """Grid pixels per file pixel along the grid's x and y, at the file's centre.

    From the local Jacobian: one grid pixel step along x (y) covers ``|J^-1 e_x|`` file
    pixels. One value per file keeps the warp's kernel the same in every chunk.
    """
    cx, cy = src.width / 2, src.height / 2
    xs, ys = src.transform @ (np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
    gx, gy = (np.asarray(v) / grid.resolution for v in transform(src.crs, crs, xs, ys))
    jacobian = np.array([[gx[1] - gx[0], gx[2] - gx[0]], [gy[1] - gy[0], gy[2] - gy[0]]])
    if not np.isfinite(jacobian).all() or abs(np.linalg.det(jacobian)) < 1e-12:
        raise DeepSegError(f"{src.path}: its centre does not map to {crs}; check its CRS")
    steps = np.linalg.inv(jacobian)  # file pixels per grid pixel, columns = grid x, y
    scale = 1.0 / np.hypot(steps[0], steps[1])
    return tuple(1.0 if abs(s - 1) < 1e-9 else float(f"{s:.12g}") for s in scale)


def _lattice_offset(src: RasterReader, crs: CRS, grid: TileGrid) -> tuple[int, int] | None:
    """Grid (col, row) of the file's pixel (0, 0) if the file is on the grid lattice, else None."""
    t, res = src.transform, grid.resolution
    if src.crs != crs:
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
        rows, cols = part.slices_in(box)
        take = mask & ~valid[rows, cols]
        np.copyto(pixels[:, rows, cols], values, where=take)  # a boolean-index copy is 20x slower
        valid[rows, cols] |= take
    return pixels, valid  # pixels never taken still hold ``fill``


def _read_one(
    raster: InputRaster, exp: Experiment, grid: TileGrid, box: PixelBox
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open_reader(raster.path) as src:
            if raster.offset is not None:
                return _read_aligned(src, raster, exp, box)
            return _read_warped(src, raster, exp, grid, box)
    except RasterioError as exc:
        raise DeepSegError(f"{raster.path}: read failed over grid pixels {box} ({exc})") from exc


def _read_aligned(
    src: RasterReader, raster: InputRaster, exp: Experiment, box: PixelBox
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
    data = src.read(exp.input.bands, window)
    if raster.nodata is None:
        inner_valid = src.read_valid(exp.input.bands, window) & _not_nan(data)
    else:
        inner_valid = _valid_mask(data, raster.nodata)
    if inner == box:  # the usual case: the file covers the box, no copy
        return data, inner_valid
    rows, cols = inner.slices_in(box)
    values[:, rows, cols] = data
    valid[rows, cols] = inner_valid
    return values, valid


def _read_warped(
    src: RasterReader, raster: InputRaster, exp: Experiment, grid: TileGrid, box: PixelBox
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the file onto the grid lattice over ``box``; pixels it does not reach are invalid."""
    target = WarpTarget(
        crs=CRS.from_user_input(exp.crs),
        transform=grid.transform(box),
        width=box.width,
        height=box.height,
        resampling=exp.input.resampling,
        nodata=raster.nodata,
        scale=raster.warp_scale,
    )
    data, reached = src.warp(exp.input.bands, target)
    if raster.nodata is None:
        return data, reached & _not_nan(data)
    return data, _valid_mask(data, raster.nodata)


def _not_nan(data: np.ndarray) -> np.ndarray:
    """(h, w) bool: no band is NaN (band by band: ``.any(axis=0)`` is 3-7x slower)."""
    if data.dtype.kind != "f":
        return np.ones(data.shape[1:], dtype=bool)
    nan = np.isnan(data[0])
    for band in data[1:]:
        nan |= np.isnan(band)
    return np.logical_not(nan, out=nan)


def _valid_mask(data: np.ndarray, nodata: float) -> np.ndarray:
    """Valid where any band differs from ``nodata`` and none is NaN (a NaN nodata: no NaN)."""
    if np.isnan(nodata):
        return _not_nan(data)
    value = np.asarray(nodata, dtype=data.dtype)
    differs = data[0] != value
    for band in data[1:]:
        differs |= band != value
    return differs & _not_nan(data) if data.dtype.kind == "f" else differs

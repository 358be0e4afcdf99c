"""Input raster files, one reader per format behind one interface (``RasterReader``).

``GdalReader`` reads whatever rasterio's GDAL opens (GeoTIFF, VRT, ...); ``KeaReader`` reads
KEA files through ``kea`` (rasterio's GDAL has no KEA driver). Both warp through the same
GDAL route (``_warp``: a ``WarpedVRT``, exact transformer, fixed resampling scale). A KEA
file gets there as the window the target needs (with the resampling kernel's reach as
margin), copied into an in-memory GeoTIFF and placed by a VRT with the whole file's size and
geotransform (``_vrt``), so GDAL computes the same source coordinates, reads the same pixels
and gives the same result as for the file itself. Windows are in the file's own pixels; warp
targets are in the grid's CRS and pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import escape

import h5py
import numpy as np
import pyproj
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.dtypes import _gdal_typename
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform
from rasterio.windows import Window

from ..core.errors import DeepSegError
from ..formats import kea

# Values must not depend on how the grid is chunked. So: no approximate transformer (rasterio
# 1.4 refuses tolerance=0; at 1e-9 px GDAL's approximation is exact), and a fixed resampling
# scale (GDAL's XSCALE/YSCALE) instead of one GDAL estimates from each chunk's shape.
WARP_TOLERANCE_PX = 1e-9
EDGE_STEP_PX = 16  # spacing of the target-edge points mapped into a KEA file's pixels


@dataclass(frozen=True)
class WarpTarget:
    """Where to warp to: an array of ``width`` x ``height`` pixels at ``transform`` in ``crs``.

    ``scale`` = (x, y) target pixels per source pixel (GDAL's XSCALE, YSCALE); ``nodata`` marks
    invalid source pixels (None: the file's mask decides, returned as an alpha mask).
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    resampling: str
    nodata: float | None
    scale: tuple[float, float]

    def gdal_options(self) -> dict:
        return dict(
            resampling=Resampling[self.resampling],
            tolerance=WARP_TOLERANCE_PX,
            XSCALE=repr(self.scale[0]),
            YSCALE=repr(self.scale[1]),
        )


class RasterReader(Protocol):
    """An open input raster. Bands are 1-based; ``nodata`` and ``descriptions`` are per band
    (None / "" where unset); ``transform`` maps the file's (col, row) to ``crs`` units."""

    path: Path
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[np.dtype, ...]
    nodata: tuple[float | None, ...]
    descriptions: tuple[str, ...]

    def read(self, bands: Sequence[int], window: Window) -> np.ndarray:
        """(len(bands), h, w) pixels of a window inside the file."""

    def read_valid(self, bands: Sequence[int], window: Window) -> np.ndarray:
        """(h, w) bool: valid in the file's own mask (nodata tag, mask band) in any band."""

    def warp(self, bands: Sequence[int], target: WarpTarget) -> tuple[np.ndarray, np.ndarray]:
        """Pixels warped onto ``target`` and an (h, w) bool of pixels the source reached."""


@contextmanager
def open_reader(path: Path) -> Iterator[RasterReader]:
    """Open an input raster with the reader for its format (``.kea``: KEA, else GDAL)."""
    if path.suffix.lower() == ".kea":
        with kea.open_kea(path) as (f, info):
            yield KeaReader(path, f, info)
        return
    try:
        with warnings.catch_warnings():  # a file without a geotransform gets DeepSeg's error
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            yield GdalReader(path, src)
    except RasterioError as exc:
        raise DeepSegError(f"{path}: cannot read this raster ({exc}); check the file") from exc


class GdalReader:
    """A raster GDAL (rasterio) opens."""

    def __init__(self, path: Path, src: rasterio.DatasetReader) -> None:
        self.path, self.src = path, src
        self.crs, self.transform = src.crs, src.transform
        self.width, self.height, self.count = src.width, src.height, src.count
        self.dtypes = tuple(np.dtype(d) for d in src.dtypes)
        self.nodata = tuple(src.nodatavals)
        self.descriptions = tuple(d or "" for d in src.descriptions)

    def read(self, bands: Sequence[int], window: Window) -> np.ndarray:
        return self.src.read(list(bands), window=window)

    def read_valid(self, bands: Sequence[int], window: Window) -> np.ndarray:
        return self.src.read_masks(list(bands), window=window).any(axis=0)

    def warp(self, bands: Sequence[int], target: WarpTarget) -> tuple[np.ndarray, np.ndarray]:
        """Warp the file itself, or (no nodata) through a VRT that adds its mask as alpha."""
        if target.nodata is not None:
            return _warp(self.src, bands, target)
        xml = _vrt(self, self.src.name, bands, None)  # with the file's mask as an alpha band
        with rasterio.open(xml) as placed:
            return _warp(placed, range(1, len(bands) + 1), target)


class KeaReader:
    """A KEA raster read with h5py through ``kea``."""

    def __init__(self, path: Path, f: h5py.File, info: kea.KeaInfo) -> None:
        self.path, self.f = path, f
        self.crs = None
        if info.crs_wkt.strip():
            try:  # pyproj first: GDAL would also log its parser's complaint
                pyproj.CRS.from_wkt(info.crs_wkt)
                self.crs = CRS.from_wkt(info.crs_wkt)
            except (CRSError, pyproj.exceptions.CRSError) as exc:
                raise DeepSegError(f"{path}: /HEADER/WKT is not a CRS ({exc})") from None
        self.transform = info.transform
        self.width, self.height, self.count = info.width, info.height, info.count
        self.dtypes = (info.dtype,) * info.count
        self.nodata, self.descriptions = info.nodata, info.descriptions

    def read(self, bands: Sequence[int], window: Window) -> np.ndarray:
        (r0, r1), (c0, c1) = window.toranges()
        return kea.read_window(self.f, r0, c0, r1 - r0, c1 - c0, bands)

    def read_valid(self, bands: Sequence[int], window: Window) -> np.ndarray:
        (r0, r1), (c0, c1) = window.toranges()
        masks = kea.read_mask_window(self.f, r0, c0, r1 - r0, c1 - c0, bands)
        if masks is not None:
            return masks.any(axis=0)
        return np.ones((r1 - r0, c1 - c0), dtype=bool)

    def warp(self, bands: Sequence[int], target: WarpTarget) -> tuple[np.ndarray, np.ndarray]:
        """Warp the window of the file that ``target`` needs, through the GDAL route.

        The window goes into an in-memory GeoTIFF, placed by a VRT with the whole file's size
        and geotransform: a window's own geotransform would make GDAL round source coordinates
        differently. (``rasterio.warp.reproject`` on the array is no option either: rasterio
        1.4 always gives it an approximate transformer, whose error depends on the target.)
        """
        window = self._source_window(target)
        if window is None:
            fill = 0 if target.nodata is None else target.nodata
            shape = (len(bands), target.height, target.width)
            return np.full(shape, fill, self.dtypes[0]), np.zeros(shape[1:], dtype=bool)
        data = self.read(bands, window)
        count, rows, cols = data.shape
        (r0, _), (c0, _) = window.toranges()
        profile = dict(driver="GTiff", width=cols, height=rows, count=count, dtype=data.dtype)
        profile |= dict(crs=self.crs, transform=self.transform @ Affine.translation(c0, r0))
        with MemoryFile() as memory:
            with memory.open(**profile) as copy:
                copy.write(data)
                if target.nodata is None:
                    valid = self.read_valid(bands, window)
                    copy.write_mask(np.where(valid, 255, 0).astype(np.uint8))
            xml = _vrt(self, memory.name, range(1, count + 1), target.nodata, window)
            with rasterio.open(xml) as placed:
                return _warp(placed, range(1, count + 1), target)

    def _source_window(self, target: WarpTarget) -> Window | None:
        """The file's pixels under ``target`` plus the resampling kernel's reach, or None.

        The target's outline (every ``EDGE_STEP_PX`` pixels, so curved edges are followed)
        is mapped into the file's pixels; the margin covers the widest kernel (cubic: 2 px)
        stretched by downsampling (1 / scale), plus one pixel for rounding.
        """
        w, h = target.width, target.height
        steps = [np.linspace(0, n, max(2, math.ceil(n / EDGE_STEP_PX) + 1)) for n in (w, h)]
        xs = np.concatenate(
            [steps[0], steps[0], np.zeros_like(steps[1]), np.full_like(steps[1], w)]
        )
        ys = np.concatenate(
            [np.zeros_like(steps[0]), np.full_like(steps[0], h), steps[1], steps[1]]
        )
        map_x, map_y = target.transform @ (xs, ys)
        src_x, src_y = transform(target.crs, self.crs, map_x, map_y)
        cols, rows = ~self.transform @ (np.asarray(src_x), np.asarray(src_y))
        if not (np.isfinite(cols).all() and np.isfinite(rows).all()):
            return Window(0, 0, self.width, self.height)  # outline not mappable: read it all
        margin = math.ceil(3 / min(1.0, *target.scale)) + 1
        col0 = max(0, math.floor(cols.min()) - margin)
        row0 = max(0, math.floor(rows.min()) - margin)
        col1 = min(self.width, math.ceil(cols.max()) + margin)
        row1 = min(self.height, math.ceil(rows.max()) + margin)
        if col0 >= col1 or row0 >= row1:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)


def _warp(src: rasterio.DatasetReader, bands: Sequence[int], target: WarpTarget):
    """``bands`` of ``src`` warped onto ``target``, and where the warp reached valid source.

    Without ``target.nodata``, ``src`` ends with an alpha band (see ``_vrt``), which GDAL finds
    and warps into the last band; it is read as such, since GDAL derives masks from alpha
    bands only for 2- and 4-band rasters.
    """
    options = target.gdal_options() | dict(
        crs=target.crs, transform=target.transform, width=target.width, height=target.height
    )
    if target.nodata is not None:
        options.update(src_nodata=target.nodata, nodata=target.nodata)
    with WarpedVRT(src, **options) as vrt:
        data = vrt.read(list(bands))
        if target.nodata is None:
            return data, vrt.read(vrt.count) > 0
    # GDAL fills what the warp does not reach with nodata in every band; read_masks would
    # warp the whole window a second time to say the same
    if np.isnan(target.nodata):
        return data, ~np.isnan(data).all(axis=0)
    return data, (data != np.asarray(target.nodata, dtype=data.dtype)).any(axis=0)


def _vrt(
    file: RasterReader,
    source: str,
    bands: Sequence[int],
    nodata: float | None,
    window: Window | None = None,
) -> str:
    """VRT XML on ``file``'s grid (size, geotransform, CRS) holding ``bands`` of the raster
    ``source``, whole or (``window``) as that window of ``file``. Without ``nodata`` a last
    band is added, an Alpha band made of ``source``'s mask (0 = invalid): GDAL's warper cannot
    be told to use a source's mask otherwise (it ignores a 2-band source's mask, and a source
    with an alpha band refuses an added one)."""
    rects = ""
    if window is not None:
        rect = window.round_lengths()
        size = f'xSize="{rect.width}" ySize="{rect.height}"'
        rects = f'<SrcRect xOff="0" yOff="0" {size}/>'
        rects += f'<DstRect xOff="{rect.col_off}" yOff="{rect.row_off}" {size}/>'

    def band(number: int, gdal_type: str, source_band: str, extra: str) -> str:
        return (
            f'<VRTRasterBand dataType="{gdal_type}" band="{number}">{extra}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(source)}</SourceFilename>'
            f"<SourceBand>{source_band}</SourceBand>{rects}</SimpleSource></VRTRasterBand>"
        )

    extra = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
    xml = [
        band(i, _gdal_typename(file.dtypes[b - 1].name), str(b), extra)
        for i, b in enumerate(bands, 1)
    ]
    if nodata is None:
        alpha = "<ColorInterp>Alpha</ColorInterp>"
        xml.append(band(len(xml) + 1, "Byte", f"mask,{bands[0]}", alpha))
    t = file.transform
    geotransform = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    return (
        f'<VRTDataset rasterXSize="{file.width}" rasterYSize="{file.height}">'
        f"<SRS>{escape(file.crs.to_wkt())}</SRS><GeoTransform>{geotransform}</GeoTransform>"
        + "".join(xml)
        + "</VRTDataset>"
    )

"""A region merged in row bands: where the bands fall, one band's staging rasters, and the
VRT that reads a region's bands as one raster for GDAL's COG driver.

With ``merge.part_px`` P > 0, a region taller than P rows is cut into bands of P rows from its
top (the last one shorter). Stage ``merge_parts`` writes each band, one task per band, as one
tiled GeoTIFF per layer under ``merged/parts/{region}/``; stage ``merge`` then reads the bands
of each layer through one VRT, which the COG driver copies into the COG, block by block, with
overviews computed over the whole region. A region of one band takes the same path (its band
written to temporary files), so splitting a region never changes a byte of its COGs.

Staging files are ZSTD level 1 with 512 px blocks: read once, they are made to be fast to
write and read (~5x LZW's speed here), and still hold a region in ~0.65 of its raw bytes.
A K-class run's ``probs`` layer has K bands; its ``class`` VRT carries the colour table.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from ..config import Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..geo.grid import PixelBox, TileGrid
from ..model.classes import ClassTable
from ..storage.paths import RunPaths
from .assembly import StoreIndex, assemble
from .layers import LAYERS, Layer

log = logging.getLogger(__name__)
BLOCK_PX = 512  # the COGs' internal tile; bands and windows start on its multiples
WINDOW_PX = 4096  # assembled at once (a multiple of BLOCK_PX): ~100 MB of arrays
PART_MARK = ".part"  # unit "{region}.part{k:04d}" (region names hold no dot)


def bands(box: PixelBox, part_px: int) -> list[PixelBox]:
    """``box`` (grid px) as row bands of ``part_px`` rows from its top; [box] when 0."""
    if part_px <= 0 or part_px >= box.height:
        return [box]
    return [
        PixelBox(box.col0, r, box.col1, min(r + part_px, box.row1))
        for r in range(box.row0, box.row1, part_px)
    ]


def window_px(classes: ClassTable | None) -> int:
    """The side of the windows assembled at once: ``WINDOW_PX``, smaller for K classes (a
    multiple of BLOCK_PX holding about as many values), so memory stays flat in K."""
    k = len(classes) if classes else 1
    return max(BLOCK_PX, int(WINDOW_PX / k**0.5) // BLOCK_PX * BLOCK_PX)


def windows(box: PixelBox, size: int = WINDOW_PX) -> list[PixelBox]:
    """``box`` cut into ``size`` squares from its top-left corner, row by row."""
    return [
        PixelBox(c, r, min(c + size, box.col1), min(r + size, box.row1))
        for r in range(box.row0, box.row1, size)
        for c in range(box.col0, box.col1, size)
    ]


def part_unit(region: str, k: int) -> str:
    return f"{region}{PART_MARK}{k:04d}"


def parse_part_unit(unit: str) -> tuple[str, int]:
    """``"{region}.part{k}"`` -> (region, k)."""
    region, _, k = unit.rpartition(PART_MARK)
    return region, int(k)


def parts_folder(paths: RunPaths, region: str) -> Path:
    return paths.merged / "parts" / region


def part_files(paths: RunPaths, region: str, k: int, names: Sequence[str]) -> list[Path]:
    """Band ``k``'s staging GeoTIFF of each layer in ``names``."""
    return [parts_folder(paths, region) / f"{name}_{k:04d}.tif" for name in names]


def band_count(layer: Layer, classes: ClassTable | None) -> int:
    """A layer's bands: one, or one per class."""
    return len(classes) if layer.per_class and classes else 1


def staging_profile(grid: TileGrid, crs: str, box: PixelBox, layer: Layer, count: int = 1) -> dict:
    """Creation options of a staging GeoTIFF of ``count`` bands over ``box`` (grid px)."""
    return dict(
        driver="GTiff",
        width=box.width,
        height=box.height,
        count=count,
        dtype=layer.dtype,
        nodata=layer.nodata,
        crs=CRS.from_user_input(crs),
        transform=grid.transform(box),
        tiled=True,
        blockxsize=BLOCK_PX,
        blockysize=BLOCK_PX,
        compress="ZSTD",
        zstd_level=1,
        BIGTIFF="IF_SAFER",
    )


def write_band(
    exp: Experiment,
    grid: TileGrid,
    index: StoreIndex,
    band: PixelBox,
    threshold: float,
    names: Sequence[str],
    targets: Sequence[Path],
    label: str,
    classes: ClassTable | None = None,
) -> None:
    """Assemble ``band`` (grid px) window by window into ``targets``, one staging GeoTIFF per
    layer of ``names`` (written in place: the caller names temporary files)."""
    with ExitStack() as stack:
        files = []
        for target, name in zip(targets, names, strict=True):
            count = band_count(LAYERS[name], classes)
            profile = staging_profile(grid, exp.crs, band, LAYERS[name], count)
            files.append(stack.enter_context(rasterio.open(target, "w", **profile)))
        parts = windows(band, window_px(classes))
        for window in progress(parts, len(parts), f"merge {label}: windows", log):
            prob, hits = assemble(grid, index, window)
            rows, cols = window.slices_in(band)
            at = Window(cols.start, rows.start, window.width, window.height)
            for f, name in zip(files, names, strict=True):
                values = LAYERS[name].compute(prob, hits, threshold)
                f.write(values.reshape(-1, *values.shape[-2:]), window=at)


def write_vrt(
    target: Path,
    grid: TileGrid,
    crs: str,
    region: PixelBox,
    layer: Layer,
    band_boxes: Sequence[PixelBox],
    files: Sequence[Path],
    classes: ClassTable | None = None,
) -> None:
    """A VRT of one layer over ``region`` (grid px, in ``crs``) reading band ``i``'s staging
    GeoTIFF ``files[i]`` into ``band_boxes[i]`` (every raster band of it: one per class for
    a per-class layer; a palette layer gets ``classes``' colour table)."""
    root = ET.Element("VRTDataset", rasterXSize=str(region.width), rasterYSize=str(region.height))
    ET.SubElement(root, "SRS").text = CRS.from_user_input(crs).to_wkt()
    t = grid.transform(region)
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e)
    )
    metadata = ET.SubElement(root, "Metadata")
    ET.SubElement(metadata, "MDI", key="AREA_OR_POINT").text = "Area"
    for k in range(1, band_count(layer, classes) + 1):
        band = ET.SubElement(
            root,
            "VRTRasterBand",
            dataType=_gdal_type(layer.dtype),
            band=str(k),
            blockXSize=str(BLOCK_PX),
            blockYSize=str(BLOCK_PX),
        )
        if layer.per_class and classes:
            ET.SubElement(band, "Description").text = classes.names[k - 1]
        ET.SubElement(band, "NoDataValue").text = repr(float(layer.nodata))
        if layer.palette and classes:
            _colour_table(band, classes)
        for box, path in zip(band_boxes, files, strict=True):
            _simple_source(band, path, k, box, region)
    ET.ElementTree(root).write(target, encoding="unicode")


def _colour_table(band: ET.Element, classes: ClassTable) -> None:
    """A 256-entry palette: each class's colour, transparent for the rest (nodata 255)."""
    ET.SubElement(band, "ColorInterp").text = "Palette"
    table = ET.SubElement(band, "ColorTable")
    for i in range(256):
        r, g, b = classes.colours[i] if i < len(classes) else (0, 0, 0)
        alpha = 255 if i < len(classes) else 0
        ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(alpha))


def _simple_source(band: ET.Element, path: Path, k: int, box: PixelBox, region: PixelBox) -> None:
    """Band ``k`` of staging file ``path`` read into ``box`` of ``region`` (grid px)."""
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(path)
    ET.SubElement(source, "SourceBand").text = str(k)
    size = {"xSize": str(box.width), "ySize": str(box.height)}
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", **size)
    at = {"xOff": str(box.col0 - region.col0), "yOff": str(box.row0 - region.row0)}
    ET.SubElement(source, "DstRect", **at, **size)


def _gdal_type(dtype: str) -> str:
    names = {"float32": "Float32", "uint8": "Byte"}
    if dtype not in names:
        raise DeepSegError(f"merge: no VRT type for staging rasters of {dtype}")
    return names[dtype]

"""Stage ``merge``: probability stores -> per-region Cloud-Optimized GeoTIFFs.

Per region, ``{region}_prob.tif`` (float32 in [0, 1], nodata -1, LZW with the floating-point
predictor, 512 px internal tiles, averaged overviews) and ``{region}_binary.tif`` (uint8 0/1
at the threshold, nodata 255, LZW, nearest overviews), both in ``crs`` on the grid's pixel
lattice. Neighbouring probability stores overlap by ``tile_size - stride``; the overlap is
combined with the rule used inside a chunk (maximum), so the result does not depend on
``grid.chunk_tiles``. The region is assembled one chunk core at a time into a tiled GeoTIFF
(flat memory), which GDAL's COG driver then copies with overviews. With ``merge.formats:
[cog, kea]`` the same cores also go, block by block, into ``{region}_prob.kea`` and
``{region}_binary.kea`` (``kea.create_raster``; overviews equal to the COGs').
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from . import kea
from .config import Experiment
from .errors import DeepSegError
from .grid import PixelBox, TileGrid
from .outputs import RunPaths, atomic_path, finished_files, partial_path
from .progress import progress
from .runlog import record_stage
from .stores import PROB_NODATA, read_prob_attrs, read_prob_window

log = logging.getLogger(__name__)
BINARY_NODATA = 255
DEFAULT_REGION = "all"
# merge.formats kea: (product, dtype, nodata, band description, overview resampling)
KEA_PRODUCTS = (
    ("prob", "float32", PROB_NODATA, "probability", "average"),
    ("binary", "uint8", BINARY_NODATA, "binary", "nearest"),
)


@dataclass(frozen=True)
class StoreIndex:
    """The probability stores of a run, by chunk, with what they recorded."""

    paths: dict[tuple[int, int], Path]
    valid_boxes: dict[tuple[int, int], PixelBox]
    threshold: float  # the threshold recorded at predict time
    scales: tuple[float, ...]

    @classmethod
    def scan(cls, folder: Path) -> StoreIndex:
        paths, boxes, thresholds, scales = {}, {}, set(), set()
        for path in finished_files(folder, ".kea"):
            attrs = read_prob_attrs(path)
            paths[attrs["chunk"]] = path
            boxes[attrs["chunk"]] = attrs["valid_box"]
            thresholds.add(attrs["threshold"])
            scales.add(attrs["scales"])
        if not paths:
            raise DeepSegError(f"{folder}: no probability stores; run predict.py first")
        if len(thresholds) > 1 or len(scales) > 1:
            raise DeepSegError(
                f"{folder}: stores were predicted with different thresholds {sorted(thresholds)} "
                f"or scales {sorted(scales)}; rerun predict.py --force"
            )
        return cls(paths, boxes, thresholds.pop(), scales.pop())


def regions(exp: Experiment, grid: TileGrid, index: StoreIndex) -> dict[str, PixelBox]:
    """Region name -> grid-pixel box: ``regions:`` bboxes, else one region over all predictions."""
    if exp.regions:
        return {name: grid.box_of_bounds(bbox) for name, bbox in exp.regions.items()}
    boxes = [b for b in index.valid_boxes.values() if b.width > 0]
    total = boxes[0]
    for box in boxes[1:]:
        total = total.union(box)
    return {DEFAULT_REGION: total}


def assemble(grid: TileGrid, index: StoreIndex, window: PixelBox) -> tuple[np.ndarray, np.ndarray]:
    """Fused probability (nodata -1) and scale bits over ``window`` from the stores reaching it."""
    prob = np.full((window.height, window.width), PROB_NODATA, dtype=np.float32)
    hits = np.zeros((window.height, window.width), dtype=np.uint8)
    ccols, crows = grid.chunks_touching(window)
    for chunk in ((c, r) for r in crows for c in ccols):
        path = index.paths.get(chunk)
        part = read_prob_window(path, window) if path is not None else None
        if part is not None:
            np.maximum(prob, part[0], out=prob)
            hits |= part[1]
    return prob, hits


def _cores(grid: TileGrid, box: PixelBox) -> list[PixelBox]:
    """The chunk cores intersected with ``box``, row by row: the units assembled at once."""
    n = grid.chunk_px
    windows = []
    for row in range(box.row0 // n, (box.row1 - 1) // n + 1):
        for col in range(box.col0 // n, (box.col1 - 1) // n + 1):
            part = grid.chunk_core(col, row).intersection(box)
            if part is not None:
                windows.append(part)
    return windows


def _profile(grid: TileGrid, exp: Experiment, box: PixelBox, dtype: str, nodata: float) -> dict:
    return dict(
        driver="GTiff",
        width=box.width,
        height=box.height,
        count=1,
        dtype=dtype,
        nodata=nodata,
        crs=CRS.from_user_input(exp.crs),
        transform=grid.transform(box),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="LZW",
        BIGTIFF="IF_SAFER",
    )


def _to_cog(src: Path, target: Path, predictor: str, resampling: str) -> None:
    with atomic_path(target) as tmp:
        rio_copy(
            src,
            tmp,
            driver="COG",
            COMPRESS="LZW",
            PREDICTOR=predictor,
            BLOCKSIZE=512,
            OVERVIEWS="IGNORE_EXISTING",
            OVERVIEW_RESAMPLING=resampling,
            BIGTIFF="IF_SAFER",
        )


def _open_kea_mosaics(
    stack: ExitStack, exp: Experiment, grid: TileGrid, box: PixelBox, paths: RunPaths, name: str
) -> list[h5py.File]:
    """With ``merge.formats: [.., kea]``, the region's KEA probability and binary rasters, open
    for block writes; on leaving ``stack`` each gets its overviews and is renamed into place."""
    if "kea" not in exp.merge.formats:
        return []
    wkt = CRS.from_user_input(exp.crs).to_wkt(version="WKT1_GDAL")
    files = []
    for product, dtype, nodata, description, resampling in KEA_PRODUCTS:
        info = kea.KeaInfo(
            box.width, box.height, 1, dtype, grid.transform(box), wkt, (nodata,), (description,)
        )
        tmp = stack.enter_context(atomic_path(paths.region_kea(name, product)))
        files.append(stack.enter_context(kea.create_raster(tmp, info, overviews=resampling)))
    return files


def merge_region(
    exp: Experiment,
    grid: TileGrid,
    index: StoreIndex,
    name: str,
    box: PixelBox,
    paths: RunPaths,
    threshold: float,
) -> None:
    """Write ``{name}_prob.tif`` and ``{name}_binary.tif`` for the region ``box``."""
    prob_tmp = partial_path(paths.region_prob(name).with_suffix(".stage.tif"))
    bin_tmp = partial_path(paths.region_binary(name).with_suffix(".stage.tif"))
    paths.merged.mkdir(parents=True, exist_ok=True)
    try:
        with (
            rasterio.open(prob_tmp, "w", **_profile(grid, exp, box, "float32", PROB_NODATA)) as p,
            rasterio.open(bin_tmp, "w", **_profile(grid, exp, box, "uint8", BINARY_NODATA)) as b,
            ExitStack() as stack,
        ):
            keas = _open_kea_mosaics(stack, exp, grid, box, paths, name)
            cores = _cores(grid, box)
            for window in progress(cores, len(cores), f"merge {name}: chunk cores", log):
                prob, _ = assemble(grid, index, window)
                binary = np.where(prob >= threshold, 1, 0).astype(np.uint8)
                binary[prob == PROB_NODATA] = BINARY_NODATA
                rows, cols = window.slices_in(box)
                win = Window(cols.start, rows.start, window.width, window.height)
                p.write(prob, 1, window=win)
                b.write(binary, 1, window=win)
                for f, array in zip(keas, (prob, binary), strict=False):
                    kea.write_band(f, 1, array, rows.start, cols.start)
        _to_cog(prob_tmp, paths.region_prob(name), predictor="FLOATING_POINT", resampling="AVERAGE")
        _to_cog(bin_tmp, paths.region_binary(name), predictor="NO", resampling="NEAREST")
    finally:
        prob_tmp.unlink(missing_ok=True)
        bin_tmp.unlink(missing_ok=True)


def merge(exp: Experiment, force: bool = False) -> dict[str, int]:
    """Merge every region; a region whose two COGs exist is skipped unless ``force``."""
    grid = TileGrid.from_experiment(exp)
    paths = RunPaths.of(exp)
    index = StoreIndex.scan(paths.predictions)
    threshold = exp.merge.threshold if exp.merge.threshold is not None else index.threshold
    counts = {"regions_written": 0, "regions_skipped": 0}
    with record_stage(paths, "merge", counts):
        for name, box in regions(exp, grid, index).items():
            targets = [paths.region_prob(name), paths.region_binary(name)]
            if "kea" in exp.merge.formats:
                targets += [paths.region_kea(name, product) for product, *_ in KEA_PRODUCTS]
            done = all(path.exists() for path in targets)
            if done and not force:
                counts["regions_skipped"] += 1
                continue
            log.info(
                "merge %s: %d x %d px at %g m, threshold %.3f",
                name,
                box.width,
                box.height,
                grid.resolution,
                threshold,
            )
            merge_region(exp, grid, index, name, box, paths, threshold)
            counts["regions_written"] += 1
    return counts

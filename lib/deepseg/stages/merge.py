"""Stage ``merge``: the probability stores -> per-region Cloud-Optimized GeoTIFFs.

Per region, always ``{region}_prob.tif`` (float32 in [0, 1], nodata -1, LZW with the
floating-point predictor, averaged overviews) and ``{region}_binary.tif`` (uint8 0/1 at the
threshold, nodata 255, nearest overviews); with ``merge.products`` also
``{region}_uncertainty.tif`` (binary entropy of the fused probability in bits, [0, 1], nodata
-1) and ``{region}_scales.tif`` (uint8 bit i set where scale i of ``inference.scales`` reached
the threshold, nodata 255), and ``{region}_preview.png`` (see ``preview``). All in ``crs``
on the grid's pixel lattice, 512 px internal tiles.
With ``merge.formats: [cog, kea]`` the probability and binary rasters are also written, block
by block, as ``{region}_prob.kea`` and ``{region}_binary.kea`` (``kea_pyramid.create_raster``, with
overviews equal to the COGs') for RSGISLib/KEA workflows.

Flat memory: the region is assembled window by window (``WINDOW_PX`` square, aligned to the
output's 512 px blocks so each compressed block is written once) into tiled GeoTIFFs, which
GDAL's COG driver then copies with overviews, block by block, within ``GDAL_CACHE_MB``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from ..config import Experiment
from ..core.progress import progress
from ..formats import kea, kea_pyramid
from ..geo.grid import PixelBox, TileGrid
from ..model.threshold import merge_threshold, threshold_identity
from ..run.driver import run
from ..run.manifest import digest, done_runs
from ..run.stage import Stage, UnitResult
from ..storage.paths import RunPaths, atomic_path, partial_path
from ..stores.layout import PROB_NODATA
from . import preview
from .assembly import DEFAULT_REGION, StoreIndex, assemble, check_predicted, regions

log = logging.getLogger(__name__)
BINARY_NODATA = 255
WINDOW_PX = 4096  # a multiple of the 512 px block
GDAL_CACHE_MB = 512
# merge.formats kea: (layer, band description, overview resampling)
KEA_LAYERS = (("prob", "probability", "average"), ("binary", "binary", "nearest"))


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2 (1 - p) in bits (0 at p = 0 or 1); nodata stays -1."""
    p = np.clip(prob.astype(np.float64), 1e-12, 1 - 1e-12)  # float32 rounds 1 - 1e-12 to 1
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h[(prob <= 0) | (prob >= 1)] = 0.0
    return np.where(prob == PROB_NODATA, PROB_NODATA, h).astype(np.float32)


def _binary(prob: np.ndarray, hits: np.ndarray, threshold: float) -> np.ndarray:
    out = (prob >= threshold).astype(np.uint8)
    out[prob == PROB_NODATA] = BINARY_NODATA
    return out


@dataclass(frozen=True)
class Layer:
    """One merged raster: its type, nodata, compression predictor, overview resampling."""

    dtype: str
    nodata: float
    predictor: str
    resampling: str
    compute: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (prob, hits, threshold)


LAYERS: dict[str, Layer] = {
    "prob": Layer("float32", PROB_NODATA, "FLOATING_POINT", "AVERAGE", lambda p, h, t: p),
    "binary": Layer("uint8", BINARY_NODATA, "NO", "NEAREST", _binary),
    "uncertainty": Layer(
        "float32", PROB_NODATA, "FLOATING_POINT", "AVERAGE", lambda p, h, t: binary_entropy(p)
    ),
    "scales": Layer(
        "uint8", BINARY_NODATA, "NO", "NEAREST", lambda p, h, t: np.where(p == PROB_NODATA, 255, h)
    ),
}


def layer_names(exp: Experiment) -> list[str]:
    """The rasters a region gets: prob and binary, then the products asked for."""
    return ["prob", "binary", *[p for p in exp.merge.products if p in LAYERS]]


def windows(box: PixelBox, size: int = WINDOW_PX) -> list[PixelBox]:
    """``box`` cut into ``size`` squares from its top-left corner, row by row."""
    return [
        PixelBox(c, r, min(c + size, box.col1), min(r + size, box.row1))
        for r in range(box.row0, box.row1, size)
        for c in range(box.col0, box.col1, size)
    ]


def _profile(grid: TileGrid, exp: Experiment, box: PixelBox, layer: Layer) -> dict:
    return dict(
        driver="GTiff",
        width=box.width,
        height=box.height,
        count=1,
        dtype=layer.dtype,
        nodata=layer.nodata,
        crs=CRS.from_user_input(exp.crs),
        transform=grid.transform(box),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="LZW",
        BIGTIFF="IF_SAFER",
    )


def _to_cog(src: Path, target: Path, layer: Layer) -> None:
    with atomic_path(target) as tmp:
        rio_copy(
            src,
            tmp,
            driver="COG",
            COMPRESS="LZW",
            PREDICTOR=layer.predictor,
            BLOCKSIZE=512,
            OVERVIEWS="IGNORE_EXISTING",
            OVERVIEW_RESAMPLING=layer.resampling,
            BIGTIFF="IF_SAFER",
            NUM_THREADS=str(len(os.sched_getaffinity(0))),
        )


def _open_kea_mosaics(
    stack: ExitStack, exp: Experiment, grid: TileGrid, box: PixelBox, region: str
) -> list[tuple[str, h5py.File]]:
    """With ``merge.formats: [.., kea]``, the region's KEA rasters open for block writes; on
    leaving ``stack`` each gets its overviews and is renamed into place."""
    if "kea" not in exp.merge.formats:
        return []
    wkt = CRS.from_user_input(exp.crs).to_wkt(version="WKT1_GDAL")
    files = []
    for layer, description, resampling in KEA_LAYERS:
        spec = LAYERS[layer]
        info = kea.KeaInfo(
            box.width, box.height, 1, spec.dtype, grid.transform(box), wkt, (spec.nodata,),
            (description,),
        )  # fmt: skip
        tmp = stack.enter_context(atomic_path(RunPaths.of(exp).region_kea(region, layer)))
        files.append((layer, stack.enter_context(kea_pyramid.create_raster(tmp, info, resampling))))
    return files


def merge_region(
    exp: Experiment, grid: TileGrid, index: StoreIndex, name: str, box: PixelBox, threshold: float
) -> list[Path]:
    """Write every layer of region ``name`` (grid-pixel ``box``); returns the files written."""
    paths = RunPaths.of(exp)
    names = layer_names(exp)
    targets = [paths.region_layer(name, n) for n in names]
    staging = [partial_path(t.with_suffix(".stage.tif")) for t in targets]
    paths.merged.mkdir(parents=True, exist_ok=True)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            with ExitStack() as stack:
                files = [
                    stack.enter_context(
                        rasterio.open(s, "w", **_profile(grid, exp, box, LAYERS[n]))
                    )
                    for s, n in zip(staging, names, strict=True)
                ]
                keas = _open_kea_mosaics(stack, exp, grid, box, name)
                peak = _peak_probability(exp, box)
                parts = windows(box)
                for window in progress(parts, len(parts), f"merge {name}: windows", log):
                    prob, hits = assemble(grid, index, window)
                    arrays = {n: LAYERS[n].compute(prob, hits, threshold) for n in names}
                    rows, cols = window.slices_in(box)
                    win = Window(cols.start, rows.start, window.width, window.height)
                    for f, n in zip(files, names, strict=True):
                        f.write(arrays[n], 1, window=win)
                    for layer, f in keas:
                        kea.write_band(f, 1, arrays[layer], rows.start, cols.start)
                    if peak:
                        peak.add(window, prob)
            for s, t, n in zip(staging, targets, names, strict=True):
                _to_cog(s, t, LAYERS[n])
            if peak:
                targets.append(_write_preview(exp, grid, name, peak, threshold))
    finally:
        for s in staging:
            s.unlink(missing_ok=True)
    return targets


def _peak_probability(exp: Experiment, box: PixelBox) -> preview.PeakProbability | None:
    if "preview" not in exp.merge.products:
        return None
    return preview.PeakProbability(preview.PreviewGrid.of(box))


def _write_preview(
    exp: Experiment, grid: TileGrid, region: str, peak: preview.PeakProbability, threshold: float
) -> Path:
    target = RunPaths.of(exp).region_preview(region)
    background = preview.imagery(exp, grid, peak.grid)
    title = f"{exp.name}: region {region}"
    cell_m = peak.grid.factor * grid.resolution
    preview.render(target, peak.peak, background, threshold, title, cell_m)
    return target


def merge_units(exp: Experiment) -> list[str]:
    """Region names: those of ``regions:``, else the one region covering every prediction."""
    if exp.regions:
        return sorted(exp.regions)
    StoreIndex.of_run(RunPaths.of(exp))  # fails clearly when there is nothing yet
    return [DEFAULT_REGION]


class MergeWorker:
    """Merges regions of one experiment: the stores are indexed once per process."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.index = StoreIndex.local(RunPaths.of(exp))
        self.boxes = regions(exp, self.grid, self.index)
        self.threshold = merge_threshold(exp, self.index.threshold)

    def run(self, unit: str) -> UnitResult:
        box = self.boxes[unit]
        log.info(
            "merge %s: %d x %d px at %g m, threshold %.3f",
            unit,
            box.width,
            box.height,
            self.grid.resolution,
            self.threshold,
        )
        merge_region(self.exp, self.grid, self.index, unit, box, self.threshold)
        written = merge_outputs(self.exp, unit)
        return UnitResult(written, {"regions_written": 1, "pixels": box.width * box.height})


def merge_outputs(exp: Experiment, region: str) -> list[Path]:
    """The files region ``region`` gets under the current ``merge.products`` and ``formats``."""
    paths = RunPaths.of(exp)
    kea_files = [paths.region_kea(region, n) for n, *_ in KEA_LAYERS]
    cogs = [paths.region_layer(region, n) for n in layer_names(exp)]
    png = [paths.region_preview(region)] if "preview" in exp.merge.products else []
    return cogs + png + (kea_files if "kea" in exp.merge.formats else [])


def merged_made_from(exp: Experiment) -> Callable[[str], str]:
    """Region -> digest of what its rasters are made from: every probability store (by the
    predict run that wrote it), the region's box, the threshold and the merge settings."""
    stores = done_runs(RunPaths.of(exp), "predict")
    settings = exp.to_dict()["merge"]
    threshold = threshold_identity(exp)
    return lambda region: digest(stores, exp.regions.get(region), threshold, settings)


STAGE = Stage(
    name="merge",
    units=merge_units,
    expected=merge_outputs,
    worker=MergeWorker,
    check=check_predicted,
    made_from=merged_made_from,
)


def merge(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Merge every region (see ``run.driver.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

"""One region merged: its bands staged, each layer's COG copied from their VRT, its KEA files
and preview read back from the VRTs (see ``merge`` for the files, ``merge_bands`` for bands).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import h5py
import rasterio
from rasterio.crs import CRS
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from ..config import Experiment
from ..core.errors import DeepSegError
from ..formats import kea, kea_pyramid
from ..geo.grid import PixelBox, TileGrid
from ..model.threshold import merge_threshold
from ..storage.paths import RunPaths, atomic_path, partial_path
from . import preview
from .assembly import StoreIndex, regions
from .layers import LAYERS, Layer, layer_names, run_classes
from .merge_bands import (
    BLOCK_PX,
    bands,
    part_files,
    parts_folder,
    windows,
    write_band,
    write_vrt,
)

log = logging.getLogger(__name__)
GDAL_CACHE_MB = 512
# merge.formats kea: (layer, band description, overview resampling)
KEA_LAYERS = (("prob", "probability", "average"), ("binary", "binary", "nearest"))


class RegionMerger:
    """What merging any region of one experiment needs: the stores indexed once per process
    (local copies), the region boxes (grid px), the threshold, the classes of a K-class run
    and the layers to write."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.index = StoreIndex.local(RunPaths.of(exp))
        self.boxes = regions(exp, self.grid, self.index)
        self.threshold = merge_threshold(exp, self.index.threshold)
        self.classes = run_classes(exp)
        recorded = self.classes.names if self.classes else ()
        if recorded != self.index.classes:
            raise DeepSegError(
                f"{RunPaths.of(exp).predictions}: the stores hold classes "
                f"{list(self.index.classes) or 'none (binary)'} but the run log's last predict "
                f"recorded {list(recorded) or 'none (binary)'}: rerun predict.py --force"
            )
        if self.classes and "kea" in exp.merge.formats:
            raise DeepSegError(
                "merge.formats: kea is written for binary runs only (probability and binary "
                f"rasters); this run has {len(self.classes)} classes: use formats: [cog]"
            )
        self.names = layer_names(exp, self.classes)


def write_cog(src: Path, target: Path, layer: Layer) -> None:
    with atomic_path(target) as tmp:
        rio_copy(
            src,
            tmp,
            driver="COG",
            COMPRESS="LZW",
            PREDICTOR=layer.predictor,
            BLOCKSIZE=BLOCK_PX,
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


def _staged_bands(
    exp: Experiment,
    merger: RegionMerger,
    region: str,
    band_boxes: list[PixelBox],
    temporary: list[Path],
) -> list[list[Path]]:
    """Per layer, the staging files of the region's ``band_boxes`` (local copies): written
    here to temporary files (listed in ``temporary``) for a region of one band, else the parts
    stage ``merge_parts`` wrote."""
    paths, names, box = RunPaths.of(exp), merger.names, merger.boxes[region]
    if len(band_boxes) == 1:
        stem = [paths.region_layer(region, n).with_suffix(".stage.tif") for n in names]
        files = [partial_path(f) for f in stem]
        temporary.extend(files)
        write_band(
            exp, merger.grid, merger.index, box, merger.threshold, names, files, region,
            merger.classes,
        )  # fmt: skip
        return [[f] for f in files]
    per_band = []
    for k in range(len(band_boxes)):
        files = part_files(paths, region, k, names)
        missing = [f for f in files if not paths.done(f)]
        if missing:
            raise DeepSegError(
                f"merge {region}: band {k} is not written ({paths.show(missing[0])}): stage "
                f"merge_parts must finish first (merge.py runs it; with --shard, every shard's "
                f"parts): run merge.py -e {exp.name} again"
            )
        per_band.append([paths.local(f) for f in files])
    return [list(layer) for layer in zip(*per_band, strict=True)]


def merge_region(exp: Experiment, merger: RegionMerger, region: str) -> None:
    """Write every layer of ``region`` from its staged bands, then its KEA files and preview."""
    paths, names, box = RunPaths.of(exp), merger.names, merger.boxes[region]
    band_boxes = bands(box, exp.merge.part_px)
    paths.merged.mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            staged = _staged_bands(exp, merger, region, band_boxes, temporary)
            vrts = {}
            for name, files in zip(names, staged, strict=True):
                target, layer = paths.region_layer(region, name), LAYERS[name]
                vrts[name] = partial_path(target.with_suffix(".vrt"))
                temporary.append(vrts[name])
                write_vrt(
                    vrts[name], merger.grid, exp.crs, box, layer, band_boxes, files,
                    merger.classes,
                )  # fmt: skip
                write_cog(vrts[name], target, layer)
            _kea_and_preview(exp, merger, region, vrts)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    if len(band_boxes) > 1:
        shutil.rmtree(parts_folder(paths, region), ignore_errors=True)  # read once; they are big
        with contextlib.suppress(OSError):  # merged/parts/ too, once no region has bands there
            parts_folder(paths, region).parent.rmdir()
    _remove_other_layers(paths, region, names)


def _remove_other_layers(paths: RunPaths, region: str, names: list[str]) -> None:
    """Remove the region's rasters of layers it no longer gets (e.g. a binary run's prob and
    binary after its model became a K-class one, or a product taken out of merge.products),
    so merged/ holds one map, not two."""
    for name in sorted(set(LAYERS) - set(names)):
        old = paths.region_layer(region, name)
        if old.exists():
            log.info("merge %s: removing %s (not a layer of this run any more)", region, old)
            old.unlink()


def _kea_and_preview(exp: Experiment, merger: RegionMerger, region: str, vrts: dict) -> None:
    """The region's KEA rasters and preview, read back from its layers' VRTs window by window."""
    box, grid = merger.boxes[region], merger.grid
    if merger.classes:
        if "preview" in exp.merge.products:
            _write_class_preview(exp, merger, region)
        return
    peak = _peak_probability(exp, box)
    with ExitStack() as stack:
        keas = _open_kea_mosaics(stack, exp, grid, box, region)
        needed = {layer for layer, _ in keas} | ({"prob"} if peak else set())
        sources = {n: stack.enter_context(rasterio.open(vrts[n])) for n in sorted(needed)}
        for window in windows(box) if needed else []:
            rows, cols = window.slices_in(box)
            at = Window(cols.start, rows.start, window.width, window.height)
            arrays = {n: src.read(1, window=at) for n, src in sources.items()}
            for layer, f in keas:
                kea.write_band(f, 1, arrays[layer], rows.start, cols.start)
            if peak:
                peak.add(window, arrays["prob"])
    if peak:
        _write_preview(exp, grid, region, peak, merger.threshold)


def _write_class_preview(exp: Experiment, merger: RegionMerger, region: str) -> None:
    paths, grid = RunPaths.of(exp), merger.grid
    at = preview.PreviewGrid.of(merger.boxes[region])
    classes = preview.class_preview(paths.region_layer(region, "class"), at)
    background = preview.imagery(exp, grid, at)
    title, cell_m = f"{exp.name}: region {region}", at.factor * grid.resolution
    target = paths.region_preview(region)
    preview.render_classes(target, classes, merger.classes, background, title, cell_m)


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

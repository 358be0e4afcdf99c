"""Stage ``merge``: the probability stores -> per-region Cloud-Optimized GeoTIFFs.

Per region, always ``{region}_prob.tif`` and ``{region}_binary.tif``, with ``merge.products``
also ``{region}_uncertainty.tif`` and ``{region}_scales.tif`` (see ``layers``), and
``{region}_preview.png`` (see ``preview``). All in ``crs`` on the grid's pixel lattice, 512 px
internal tiles, LZW (floating-point predictor for float32). With ``merge.formats: [cog, kea]``
the probability and binary rasters are also written, block by block, as ``{region}_prob.kea``
and ``{region}_binary.kea`` (``kea_pyramid.create_raster``, with overviews like the COGs') for
RSGISLib/KEA workflows. A K-class run (the model names its classes) writes ``{region}_class``,
``_maxprob``, ``_entropy`` and ``_gap.tif`` instead of prob and binary, and with
``merge.products`` ``_probs.tif`` (K bands), ``_scales.tif`` and a class preview (``layers``).

Flat memory: a region is assembled window by window into tiled staging GeoTIFFs, which GDAL's
COG driver copies through a VRT, with overviews, block by block, within ``GDAL_CACHE_MB``. With
``merge.part_px`` a region is assembled as row bands by separate tasks first (stage
``merge_parts``, see ``merge_bands``); the COGs are the same to the byte.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import rasterio

from ..config import Experiment
from ..geo.grid import TileGrid
from ..model.threshold import threshold_identity
from ..run.driver import run
from ..run.manifest import digest, digest_after, done_runs
from ..run.stage import Stage, UnitResult, new_run_id, pending_units
from ..storage.paths import RunPaths, atomic_path
from .assembly import DEFAULT_REGION, StoreIndex, check_predicted, regions
from .layers import layer_names, run_classes
from .merge_bands import bands, parse_part_unit, part_files, part_unit, write_band
from .region_merge import GDAL_CACHE_MB, KEA_LAYERS, RegionMerger, merge_region

log = logging.getLogger(__name__)


def merge_units(exp: Experiment) -> list[str]:
    """Region names: those of ``regions:``, else the one region covering every prediction."""
    if exp.regions:
        return sorted(exp.regions)
    StoreIndex.of_run(RunPaths.of(exp))  # fails clearly when there is nothing yet
    return [DEFAULT_REGION]


class MergeWorker(RegionMerger):
    """Stage ``merge``: one region's COGs, KEA files and preview per unit."""

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
        merge_region(self.exp, self, unit)
        written = region_files(self.exp, unit)
        return UnitResult(written, {"regions_written": 1, "pixels": box.width * box.height})


class PartWorker(RegionMerger):
    """Stage ``merge_parts``: one row band of a region (``merge.part_px``) per unit."""

    def run(self, unit: str) -> UnitResult:
        region, k = parse_part_unit(unit)
        band = bands(self.boxes[region], self.exp.merge.part_px)[k]
        targets = part_files(RunPaths.of(self.exp), region, k, self.names)
        targets[0].parent.mkdir(parents=True, exist_ok=True)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), ExitStack() as stack:
            files = [stack.enter_context(atomic_path(t)) for t in targets]  # renamed on exit
            write_band(
                self.exp, self.grid, self.index, band, self.threshold, self.names, files, unit,
                self.classes,
            )  # fmt: skip
        return UnitResult(targets, {"parts_written": 1, "pixels": band.width * band.height})


def region_files(exp: Experiment, region: str) -> list[Path]:
    """The files region ``region`` gets under the current ``merge.products`` and ``formats``."""
    paths = RunPaths.of(exp)
    kea_files = [paths.region_kea(region, n) for n, *_ in KEA_LAYERS]
    cogs = [paths.region_layer(region, n) for n in layer_names(exp, run_classes(exp))]
    png = [paths.region_preview(region)] if "preview" in exp.merge.products else []
    return cogs + png + (kea_files if "kea" in exp.merge.formats else [])


def merge_outputs(exp: Experiment, region: str) -> list[str]:
    """``region_files``, relative to ``output.path`` (the stage's ``expected``)."""
    return [RunPaths.of(exp).relative(f) for f in region_files(exp, region)]


def merged_made_from(exp: Experiment) -> Callable[[str], str]:
    """Region -> digest of what its rasters are made from: every probability store (by the
    predict run that wrote it), the region's box, the threshold and the merge settings
    (``part_px`` aside: it changes no byte)."""
    stores = digest_after(done_runs(RunPaths.of(exp), "predict"))  # encoded once, not per region
    settings = {k: v for k, v in exp.to_dict()["merge"].items() if k != "part_px"}
    threshold = threshold_identity(exp)
    return lambda region: stores(exp.regions.get(region), threshold, settings)


STAGE = Stage(
    name="merge",
    units=merge_units,
    expected=merge_outputs,
    worker=MergeWorker,
    check=check_predicted,
    made_from=merged_made_from,
)


def part_units(exp: Experiment, force: bool = False) -> list[str]:
    """The bands of every region split by ``merge.part_px`` whose merge has work to do."""
    if not exp.merge.part_px:
        return []
    boxes = regions(exp, TileGrid.from_experiment(exp), StoreIndex.of_run(RunPaths.of(exp)))
    todo = pending_units(STAGE, exp, merge_units(exp), new_run_id(), force)
    counts = {r: len(bands(boxes[r], exp.merge.part_px)) for r in todo}
    return sorted(part_unit(r, k) for r, n in counts.items() if n > 1 for k in range(n))


def part_outputs(exp: Experiment, unit: str) -> list[str]:
    region, k = parse_part_unit(unit)
    paths = RunPaths.of(exp)
    files = part_files(paths, region, k, layer_names(exp, run_classes(exp)))
    return [paths.relative(f) for f in files]


def parts_made_from(exp: Experiment) -> Callable[[str], str]:
    """Band -> its region's digest and ``merge.part_px`` (which says where the band lies)."""
    by_region = functools.lru_cache(maxsize=None)(merged_made_from(exp))
    return lambda unit: digest(by_region(parse_part_unit(unit)[0]), exp.merge.part_px)


def parts_stage(force: bool) -> Stage:
    """Stage ``merge_parts`` (its units depend on which merges ``force`` redoes)."""
    return Stage(
        name="merge_parts",
        units=functools.partial(part_units, force=force),
        expected=part_outputs,
        worker=PartWorker,
        check=check_predicted,
        made_from=parts_made_from,
    )


def merge(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Merge every region (see ``run.driver.run``); regions split by ``merge.part_px`` have
    their bands written by stage ``merge_parts`` first."""
    if exp.merge.part_px:
        run(parts_stage(force), exp, force=force, shard=shard)
    return run(STAGE, exp, force=force, shard=shard)

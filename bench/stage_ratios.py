"""Two CPU stages against what their own library reaches on the same data (issue 16).

    python bench/stage_ratios.py [--size 8192] [--chunks 4] [--repeat 3] [--processes N]
                                 [--record] [--work /tmp/deepseg-stage-ratios] [--results PATH]

- vectorize: the stage (``vectorize(exp, force=True)``: read the probability stores, trace
  every chunk core, join cut pieces, attributes, GeoPackage) on the ``size`` x ``size`` px
  synthetic region of ``merge_memory.write_run``, against ``rasterio.features.shapes``
  (connectivity 4) + shapely geometries + one GeoPackage written by pyogrio, on the same binary
  mask (the region's probability function at the stores' threshold 0.5, built in memory);
  with ``--processes`` N > 1 (default: the machine's cores) the stage also runs with
  ``cluster.local_processes: N`` (spawning them counted), the library still on one core.
- create_tiles: the stage on a synthetic scene (``staging``: ``chunks`` chunks of the
  production grid, 512 px tiles, stride 256, 16 x 16 tiles a chunk, 3 bands uint8), (a) on the
  grid lattice, against a rasterio windowed read of the file in windows of a tile store's
  size, each pixel read once, and (b) the same pixels shifted by a fraction of a pixel, so
  DeepSeg warps it, against a default ``WarpedVRT`` onto the grid box read in the same
  windows. Both sides write HDF5 as the tile stores are written (512 px chunks, shuffle +
  deflate 1 by ISA-L, ``formats.deflate``), one file per window.

Mpx/s = the input's pixels (vectorize: the region; tiles: the grid pixels the scene covers)
over the best of ``--repeat`` wall times; ratio = DeepSeg's over the library's. DeepSeg's side
is then run once under cProfile and its top 5 functions by own time are listed.
``--record`` appends the table and the hot spots to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import io
import json
import os
import platform
import pstats
import shutil
import sys
import time
from pathlib import Path

import geopandas as gpd
import h5py
import numpy as np
import pyogrio
import rasterio
from rasterio import features
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import shape

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "lib"), str(REPO / "bench")]

from merge_memory import ORIGIN_COL, ORIGIN_ROW, blobs, probability, write_run  # noqa: E402
from staging import DEMO_MODEL, synthetic_experiment  # noqa: E402

from deepseg.config import load_experiment  # noqa: E402
from deepseg.formats.deflate import write_array  # noqa: E402
from deepseg.geo.grid import PixelBox, TileGrid  # noqa: E402
from deepseg.stages.tiles import create_tiles  # noqa: E402
from deepseg.stages.vectorize import vectorize  # noqa: E402
from deepseg.storage.paths import RunPaths  # noqa: E402

PRODUCTION_GRID = {"tile_size": 512, "stride": 256, "chunk_tiles": 16}
SHIFT_PX = (0.37, 0.21)  # the misaligned scene's origin, right of and below the lattice


def best_of(fn, repeat: int) -> float:
    """The shortest of ``repeat`` wall times of ``fn()``, seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hot_spots(fn, n: int = 5) -> list[str]:
    """``fn`` once under cProfile: its ``n`` functions with the most own time, as text."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values()) or 1.0
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]
    out = []
    for (file, line, name), (_, calls, own, cum, _) in top:
        where = name if file == "~" else f"{name} ({Path(file).name}:{line})"
        share = f"{own:.2f} s own ({own / total:.0%}), {cum:.2f} s cum"
        out.append(f"`{where}`: {share}, {calls} calls")
    return out


# vectorize ---------------------------------------------------------------------------------
def region_mask(size: int) -> np.ndarray:
    """The region's binary map: its probability at the stores' threshold (0.5), uint8."""
    box = PixelBox(ORIGIN_COL, ORIGIN_ROW, ORIGIN_COL + size, ORIGIN_ROW + size)
    return (probability(box, blobs(size)) >= 0.5).astype(np.uint8)


def shapes_to_gpkg(mask: np.ndarray, transform, crs: str, target: Path) -> gpd.GeoDataFrame:
    """The library's vectorize: trace (4-connected), shapely geometries, one GeoPackage."""
    geoms = [
        shape(g)
        for g, v in features.shapes(mask, mask=mask.view(bool), connectivity=4, transform=transform)
        if v == 1
    ]
    frame = gpd.GeoDataFrame({"value": np.ones(len(geoms), np.uint8)}, geometry=geoms, crs=crs)
    pyogrio.write_dataframe(frame, target, layer="polygons", driver="GPKG")
    return frame


def vectorize_case(
    work: Path, size: int, repeat: int, profile: bool = True, processes: int = 1
) -> dict:
    exp = load_experiment(write_run(work / "vectorize" / str(size), size))
    cluster = dataclasses.replace(exp.cluster, local_processes=processes)
    exp = dataclasses.replace(exp, cluster=cluster)
    grid = TileGrid.from_experiment(exp)
    transform = grid.transform(PixelBox(ORIGIN_COL, ORIGIN_ROW, ORIGIN_COL + 1, ORIGIN_ROW + 1))
    mask, target = region_mask(size), work / "vectorize" / f"shapes-{size}.gpkg"
    deepseg = best_of(lambda: vectorize(exp, force=True), repeat)
    library = best_of(lambda: shapes_to_gpkg(mask, transform, exp.crs, target), repeat)
    ours = pyogrio.read_dataframe(RunPaths.of(exp).polygons, layer="rts_predictions")
    theirs = pyogrio.read_dataframe(target)
    return {
        "stage": "vectorize",
        "input": f"binary map, {len(ours)} polygons (shapes: {len(theirs)})"
        + (f", {processes} processes (cluster.local_processes)" if processes > 1 else ""),
        "rate_key": "vectorize" if processes == 1 else None,
        "px": size * size,
        "deepseg_s": deepseg,
        "library_s": library,
        "areas": (float(ours.area.sum()), float(theirs.area.sum())),
        "counts": (len(ours), len(theirs)),
        "hot": hot_spots(lambda: vectorize(exp, force=True)) if profile and processes == 1 else [],
    }


# create_tiles ------------------------------------------------------------------------------
def write_h5(path: Path, pixels: np.ndarray) -> None:
    """One window's bands as 2-D datasets with the tile stores' chunks, filters and writer."""
    with h5py.File(path, "w") as f:
        for i, band in enumerate(pixels):
            chunks = tuple(min(512, n) for n in band.shape)
            ds = f.create_dataset(
                f"band{i + 1}", band.shape, band.dtype, chunks=chunks, shuffle=True,
                compression="gzip", compression_opts=1,
            )  # fmt: skip
            write_array(ds, band)


def windowed_copy(src, box: PixelBox, side: int, out: Path) -> None:
    """Read ``src`` (covering ``box``) in ``side`` px windows, each pixel once, to HDF5."""
    out.mkdir(parents=True, exist_ok=True)
    for row in range(0, box.height, side):
        for col in range(0, box.width, side):
            window = Window(col, row, min(side, box.width - col), min(side, box.height - row))
            write_h5(out / f"r{row}_c{col}.h5", src.read(window=window))


def shifted_scene(scene: Path, target: Path, grid: TileGrid, box: PixelBox) -> PixelBox:
    """``scene`` less its outer pixel ring, placed ``SHIFT_PX`` off the lattice (so its warped
    footprint stays inside ``box``'s chunks); the grid box it covers."""
    if not target.exists():
        with rasterio.open(scene) as src:
            profile = src.profile | {"width": src.width - 2, "height": src.height - 2}
            profile["transform"] = grid.transform(box) @ rasterio.Affine.translation(
                1 + SHIFT_PX[0], 1 + SHIFT_PX[1]
            )
            data = src.read(window=Window(1, 1, src.width - 2, src.height - 2))
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(data)
    return PixelBox(box.col0 + 1, box.row0 + 1, box.col1, box.row1)


def library_tiles(
    path: Path, box: PixelBox, warp: bool, exp, grid: TileGrid, side: int, out: Path
) -> None:
    """The library's staging of ``path`` over ``box``: windowed reads of the file, or of a
    default WarpedVRT onto the grid lattice (``exp``'s CRS and resampling), to HDF5."""
    with rasterio.open(path) as src:
        if not warp:
            return windowed_copy(src, box, side, out)
        options = dict(crs=exp.crs, resampling=Resampling[exp.input.resampling])
        t, w, h = grid.transform(box), box.width, box.height
        with WarpedVRT(src, transform=t, width=w, height=h, **options) as vrt:
            windowed_copy(vrt, box, side, out)


def tiles_cases(
    work: Path, chunks: int, repeat: int, grid_keys: dict, profile: bool = True
) -> list[dict]:
    exp = synthetic_experiment(work / "tiles", DEMO_MODEL, chunks, grid_keys, "cpu")
    grid, scene = TileGrid.from_experiment(exp), exp.input.rasters[0]
    with rasterio.open(scene) as src:
        t = src.transform
        col0 = round((t.c - grid.origin_x) / grid.resolution)
        row0 = round((grid.origin_y - t.f) / grid.resolution)
        box = PixelBox(col0, row0, col0 + src.width, row0 + src.height)
    side = grid.chunk_store_box(0, 0).width  # the window a tile store reads
    shifted = scene.with_name("scene-shifted.tif")
    warped_box = shifted_scene(scene, shifted, grid, box)
    cases = [("grid-aligned GeoTIFF", scene, box), ("GeoTIFF 0.37, 0.21 px off", shifted, None)]
    rows = []
    for name, path, aligned in cases:
        run = dataclasses.replace(
            exp,
            input=dataclasses.replace(exp.input, rasters=(path,)),
            output=dataclasses.replace(exp.output, path=path.with_name(f"run-{path.stem}")),
        )
        out, where = path.with_name(f"library-{path.stem}"), aligned or warped_box
        library = functools.partial(
            library_tiles, path, where, aligned is None, run, grid, side, out
        )
        stage = functools.partial(create_tiles, run, force=True)
        rows.append(
            {
                "stage": "create_tiles",
                "input": name,
                "rate_key": "create_tiles" if aligned is not None else "create_tiles_warped",
                "px": where.width * where.height,
                "deepseg_s": best_of(stage, repeat),
                "library_s": best_of(library, repeat),
                "hot": hot_spots(stage) if profile else [],
                "run": run,
                "library_out": out,
                "box": where,
            }
        )
    return rows


# report ------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = [
        "| stage | input | px | DeepSeg Mpx/s | library Mpx/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, theirs = r["px"] / r["deepseg_s"] / 1e6, r["px"] / r["library_s"] / 1e6
        r.update(deepseg_mpx_s=ours, library_mpx_s=theirs, ratio=ours / theirs)
        lines.append(
            f"| {r['stage']} | {r['input']} | {r['px']:,} | {ours:.2f} | {theirs:.2f} | "
            f"{r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def hot_text(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        parts.append(f"Hot spots, {r['stage']} ({r['input']}), cProfile, own time:\n")
        parts.extend(f"{i + 1}. {h}" for i, h in enumerate(r["hot"]))
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="vectorize region side, px")
    parser.add_argument("--chunks", type=int, default=4, help="create_tiles scene, chunks")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepseg-stage-ratios"))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--record", action="store_true", help="append to --results")
    parser.add_argument("--fresh", action="store_true", help="delete --work first")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="also vectorize with cluster.local_processes at this")  # fmt: skip
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    load = os.getloadavg()[0]
    rows = [vectorize_case(args.work, args.size, args.repeat)]
    if args.processes > 1:
        rows.append(vectorize_case(args.work, args.size, args.repeat, False, args.processes))
    rows += tiles_cases(args.work, args.chunks, args.repeat, PRODUCTION_GRID)
    text, hot = table(rows), hot_text(rows)
    print(text + "\n\n" + hot)
    if args.record:
        command = "python bench/stage_ratios.py " + " ".join(argv or sys.argv[1:])
        with open(args.results, "a") as fh:
            fh.write(
                f"\n## Stage ratios against their libraries ({time.strftime('%Y-%m-%d')}, "
                f"{platform.node()}, {platform.processor() or platform.machine()})\n\n"
                f"`{command.strip()}` ({os.cpu_count()} cores, load average {load:.1f} at "
                f"the start, best of {args.repeat})\n\n{text}\n\n{hot}"
            )
            cpu = {r["rate_key"]: r["deepseg_mpx_s"] for r in rows if r["rate_key"]}
            fh.write(f"\n<!-- cpu_rates {json.dumps(cpu)} -->\n")  # for bench/project.py
    return rows


if __name__ == "__main__":
    main()

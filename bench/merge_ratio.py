"""Merge's Mpx/s against GDAL writing the same COGs from an in-memory array (one run).

    python bench/merge_ratio.py [--size 8192] [--part-px 2048] [--repeat 3] [--record]

The region and its probability stores are ``merge_memory``'s (a ``size`` x ``size`` px region
of the production grid). DeepSeg: the merge stage, one process, whole region (``--force``
each time): reading the stores, fusing them, staging, the COG copy with overviews. GDAL: the
merged probability and binary rasters, already in memory (a MEM dataset), copied into the same
COGs with the same options (``region_merge.write_cog``). Ratio = GDAL's time / merge's time,
i.e. merge Mpx/s over GDAL's; the issue asks >= 0.5. With ``--part-px`` the region is also
merged in row bands (stage merge_parts, run here one band after another): the time of the
slowest band and of the assembly show the wall time when each band is its own array task.
Every time is the best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.io import MemoryFile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "bench"))

from merge_memory import write_run  # noqa: E402
from stage_ratios import best_of  # noqa: E402

from deepseg.config import load_experiment  # noqa: E402
from deepseg.run.manifest import fold  # noqa: E402
from deepseg.stages.layers import LAYERS  # noqa: E402
from deepseg.stages.merge import merge  # noqa: E402
from deepseg.stages.region_merge import GDAL_CACHE_MB, write_cog  # noqa: E402
from deepseg.storage.paths import RunPaths  # noqa: E402

iso = dt.datetime.fromisoformat


def gdal_cogs(exp, folder: Path) -> float:
    """The region's merged prob and binary rasters, in memory, copied into COGs: the seconds
    of the two copies (loading the arrays not counted)."""
    paths, seconds = RunPaths.of(exp), 0.0
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for name in ("prob", "binary"):
            with rasterio.open(paths.region_layer("all", name)) as src:
                profile, array = src.profile, src.read(1)
            profile.update(driver="MEM", compress=None)
            with MemoryFile() as memory, memory.open(**profile) as mem:
                mem.write(array, 1)
                del array
                start = time.perf_counter()
                write_cog(mem, folder / f"{name}.tif", LAYERS[name])
                seconds += time.perf_counter() - start
    return seconds


def gdal_time(exp, repeat: int) -> float:
    """Best total time of GDAL's two COG copies (the arrays' loading not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        return min(gdal_cogs(exp, Path(tmp)) for _ in range(repeat))


def banded_times(exp, part_px: int, repeat: int) -> tuple[float, float, int]:
    """(slowest band, assembly) seconds, best of ``repeat``, and the number of bands."""
    banded = dataclasses.replace(exp, merge=dataclasses.replace(exp.merge, part_px=part_px))
    slowest, assembly, count = [], [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        merge(banded, force=True)
        total = time.perf_counter() - start
        parts = fold(RunPaths.of(exp), "merge_parts")
        last = {u: s for u, s in parts.items() if s.status == "done"}
        spans = [(iso(s.ended) - iso(s.started)).total_seconds() for s in last.values()]
        count = len(spans)
        slowest.append(max(spans))
        assembly.append(total - sum(spans))
    return min(slowest), min(assembly), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="region side, px")
    parser.add_argument("--part-px", type=int, default=2048, help="band height; 0: none")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepseg-bench"))
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    exp = load_experiment(write_run(args.work / str(args.size), args.size))
    mpx = args.size * args.size / 1e6
    merge_s = best_of(lambda: merge(exp, force=True), args.repeat)
    gdal_s = gdal_time(exp, args.repeat)
    rows = [
        "| what | Mpx | seconds | Mpx/s |",
        "|---|---|---|---|",
        f"| merge stage, one process | {mpx:.0f} | {merge_s:.2f} | {mpx / merge_s:.1f} |",
        f"| GDAL: MEM array -> COG (prob + binary) | {mpx:.0f} | {gdal_s:.2f} "
        f"| {mpx / gdal_s:.1f} |",
    ]
    if args.part_px:
        slowest, assembly, count = banded_times(exp, args.part_px, args.repeat)
        rows.append(f"| merge_parts: slowest of {count} bands | {mpx / count:.0f} | "
                    f"{slowest:.2f} | {mpx / count / slowest:.1f} |")  # fmt: skip
        rows.append(f"| merge: assembly of the bands | {mpx:.0f} | {assembly:.2f} | "
                    f"{mpx / assembly:.1f} |")  # fmt: skip
    ratio = gdal_s / merge_s
    text = "\n".join(
        [*rows, "", f"Ratio (GDAL time / merge time): **{ratio:.2f}** (target >= 0.5)."]
    )
    print(text)
    if args.record:
        load = os.getloadavg()[0]
        command = f"python bench/merge_ratio.py --size {args.size} --part-px {args.part_px} " \
            f"--repeat {args.repeat} --record"  # fmt: skip
        with open(REPO / "bench" / "RESULTS.md", "a") as fh:
            fh.write(
                f"\n## Merge against GDAL's COG writer ({time.strftime('%Y-%m-%d')}, "
                f"{platform.node()}, {platform.machine()})\n\n`{command}`\n\n"
                f"{os.cpu_count()} cores, load average {load:.1f} at the end, best of "
                f"{args.repeat}.\n\n{text}\n"
                f"\n<!-- cpu_rates {json.dumps({'merge': mpx / merge_s})} -->\n"  # project.py
            )


if __name__ == "__main__":
    main()

"""Peak memory of merge and vectorize on a large synthetic region (issue: flat memory).

    python bench/merge_memory.py [--size 40960] [--work /tmp/deepseg-bench] [--record]

Writes probability stores for a ``size`` x ``size`` px region directly (the production grid:
512 px tiles, stride 256, 16-tile chunks), from one global function so overlapping stores
agree: a smooth low background and ~0.4 % of the area in slump-sized blobs (median ~700 px,
some cut by chunk borders). Then runs merge and vectorize, each in its own child process,
and prints each one's peak RSS (whole process, from the kernel) next to the region's size.
``--record`` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from deepseg.config import load_experiment  # noqa: E402
from deepseg.geo.grid import TileGrid  # noqa: E402
from deepseg.storage.paths import RunPaths  # noqa: E402
from deepseg.stores.layout import StorePlace  # noqa: E402
from deepseg.stores.prob_store import ProbStore, write_prob_store  # noqa: E402

ORIGIN_COL, ORIGIN_ROW = 4096 * 150, 4096 * 300  # region's top-left, global grid px


def blobs(size: int, seed: int = 0) -> np.ndarray:
    """(n, 3) blob centres (col, row, global px) and radii covering ~0.4 % of the region."""
    rng = np.random.default_rng(seed)
    radii = np.exp(rng.normal(math.log(15), 0.6, size=int(size * size * 0.004 / 900)))
    cols = ORIGIN_COL + rng.uniform(0, size, radii.size)
    rows = ORIGIN_ROW + rng.uniform(0, size, radii.size)
    return np.column_stack([cols, rows, radii])


def probability(box, centres: np.ndarray) -> np.ndarray:
    """The synthetic map over a grid-pixel box: background 0.02-0.1, blobs up to ~0.95."""
    rows = np.arange(box.row0, box.row1, dtype=np.float32)[:, None]
    cols = np.arange(box.col0, box.col1, dtype=np.float32)[None, :]
    prob = 0.06 + 0.04 * np.sin(rows / 700.0) * np.cos(cols / 900.0)
    near = centres[
        (centres[:, 0] > box.col0 - 100)
        & (centres[:, 0] < box.col1 + 100)
        & (centres[:, 1] > box.row0 - 100)
        & (centres[:, 1] < box.row1 + 100)
    ]
    for col, row, radius in near:
        r0, r1 = int(max(box.row0, row - radius - 2)), int(min(box.row1, row + radius + 3))
        c0, c1 = int(max(box.col0, col - radius - 2)), int(min(box.col1, col + radius + 3))
        if r0 >= r1 or c0 >= c1:
            continue
        d = np.hypot(
            rows[r0 - box.row0 : r1 - box.row0] - row, cols[:, c0 - box.col0 : c1 - box.col0] - col
        )
        sub = prob[r0 - box.row0 : r1 - box.row0, c0 - box.col0 : c1 - box.col0]
        np.maximum(sub, np.clip(0.95 - 0.4 * d / radius, 0, 0.95) * (d < radius * 1.2), out=sub)
    return prob.astype(np.float32)


def write_run(work: Path, size: int) -> Path:
    """An experiment and its probability stores for the synthetic region."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    model.mkdir(exist_ok=True)
    for name in ("best_model.pth", "normalization_stats.json", "config.yaml"):
        (model / name).touch()
    scene = work / "scene.tif"  # input.rasters must exist; never read by merge/vectorize
    scene.touch()
    exp_path = work / "bench.yaml"
    exp_path.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "output": {"path": str(work / "out")},
                "input": {"rasters": [str(scene)]},
                "model": {"dir": str(model)},
            }
        )
    )
    exp = load_experiment(exp_path)
    grid, paths = TileGrid.from_experiment(exp), RunPaths.of(exp)
    centres = blobs(size)
    k = grid.chunk_px
    chunks = [
        (c, r)
        for r in range(ORIGIN_ROW // k, (ORIGIN_ROW + size - 1) // k + 1)
        for c in range(ORIGIN_COL // k, (ORIGIN_COL + size - 1) // k + 1)
    ]
    start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        target = paths.prob_store(grid.chunk_id(*chunk))
        if target.exists():
            continue
        box = grid.chunk_footprint(*chunk)
        region = type(box)(ORIGIN_COL, ORIGIN_ROW, ORIGIN_COL + size, ORIGIN_ROW + size)
        prob = probability(box, centres)
        inside = np.full(prob.shape, False)
        part = box.intersection(region)
        if part is not None:
            inside[part.slices_in(box)] = True
        prob[~inside] = -1.0
        hits = (prob >= 0.5).astype(np.uint8)
        place = StorePlace.on_grid(grid, exp.crs, chunk, box)
        write_prob_store(target, ProbStore(place, prob, hits, None, 0.5, (1.0,)))
        print(f"store {i + 1}/{len(chunks)} ({time.perf_counter() - start:.0f} s)", end="\r")
    print()
    return exp_path


def peak_rss(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh Python; its own peak RSS in GiB and wall time in seconds."""
    report = (
        "; import resource; print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code + report],
        check=True,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    seconds = time.perf_counter() - start
    kib = int(next(line for line in out.splitlines() if line.startswith("PEAK_KIB")).split()[1])
    return kib / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40960, help="region side, pixels")
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepseg-bench"))
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    work = args.work / str(args.size)
    exp_path = write_run(work, args.size)
    prelude = (
        f"import sys; sys.path.insert(0, {str(REPO / 'lib')!r}); "
        "from deepseg.config import load_experiment; "
        "from deepseg.core.progress import setup_logging; "
        f"setup_logging(); exp = load_experiment({str(exp_path)!r}); "
    )
    merge_gib, merge_s = peak_rss(
        prelude + "from deepseg.stages.merge import merge; merge(exp, force=True)"
    )
    vect_gib, vect_s = peak_rss(
        prelude + "from deepseg.stages.vectorize import vectorize; vectorize(exp, force=True)"
    )
    stages = json.loads((work / "out" / "logs" / "inference_log.json").read_text())["stages"]
    polygons = stages["vectorize"].get("polygons", "?")
    region = f"{args.size} x {args.size}"
    table = "\n".join(
        [
            "| stage | region, px | peak RSS, GiB | wall, s |",
            "|---|---|---|---|",
            f"| merge | {region} | {merge_gib:.2f} | {merge_s:.0f} |",
            f"| vectorize ({polygons} polygons) | {region} | {vect_gib:.2f} | {vect_s:.0f} |",
        ]
    )
    print(table)
    if args.record:
        with open(REPO / "bench" / "RESULTS.md", "a") as fh:
            fh.write(
                f"\n## Merge and vectorize memory ({time.strftime('%Y-%m-%d')}, "
                f"{platform.node()}, {platform.processor() or platform.machine()})\n\n"
                f"`python bench/merge_memory.py --size {args.size} --record`\n\n{table}\n"
            )


if __name__ == "__main__":
    main()

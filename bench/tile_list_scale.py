"""Reading a continent's ``grid.tile_list``: seconds and memory per 10^6 listed tiles.

    python bench/tile_list_scale.py [--tiles 4000000] [--record]

Writes a CSV of ``--tiles`` tiles of the production grid (a square block of them, 16 x 16 per
chunk) and reads it in a child process with ``geo.tile_list.read_tile_list`` (pandas' C parser
in blocks, numpy checks, one int64 key per tile), then asks what the stages ask: the chunks,
one chunk's tiles, and membership of a chunk's 256 tiles. Prints the read time, the child's
peak RSS and both per 10^6 tiles; the pan-Arctic list holds ~4e7 tiles.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from deepseg.geo.grid import TileGrid  # noqa: E402
from deepseg.geo.tile_list import read_tile_list  # noqa: E402

GRID = TileGrid(-4000100.0, 4100100.0, 3.0, 512, 256, 16, 0)


def write_list(path: Path, n: int) -> None:
    side = math.isqrt(n)
    cols, rows = np.meshgrid(np.arange(side) + 1000, np.arange(side) + 2000)
    cols, rows = cols.ravel(), rows.ravel()
    s, t, r = GRID.stride, GRID.tile_size, GRID.resolution
    frame = pd.DataFrame({
        "tile_id": [f"c{c:06d}_r{w:06d}" for c, w in zip(cols, rows, strict=True)],
        "minx": GRID.origin_x + cols * s * r, "miny": GRID.origin_y - (rows * s + t) * r,
        "maxx": GRID.origin_x + (cols * s + t) * r, "maxy": GRID.origin_y - rows * s * r,
    })  # fmt: skip
    frame.to_csv(path, index=False)


def child(path: Path) -> None:
    start = time.perf_counter()
    listed = read_tile_list(path, GRID)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    chunks = listed.chunks()
    ccol, crow = min(chunks)
    tiles = listed.in_chunk(ccol, crow)
    cols, rows = np.array([c for c, _ in tiles]), np.array([r for _, r in tiles])
    assert listed.contains(cols, rows).all()
    ask_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"RESULT {len(listed)} {len(chunks)} {read_s} {ask_s} {peak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=4_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepseg-bench"))
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"tile_list_{args.tiles}.csv"
    if not path.exists():
        write_list(path, args.tiles)
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    n, chunks, read_s, ask_s, peak = next(
        ln for ln in out.splitlines() if ln.startswith("RESULT")
    ).split()[1:]
    n, read_s, peak = int(n), float(read_s), float(peak)
    table = "\n".join([
        "| tiles | chunks | read, s | s per 10^6 tiles | chunk questions, s | peak RSS, GiB |",
        "|---|---|---|---|---|---|",
        f"| {n:,} | {int(chunks):,} | {read_s:.1f} | {read_s / n * 1e6:.2f} | "
        f"{float(ask_s):.3f} | {peak:.2f} |",
    ])  # fmt: skip
    print(table)
    if args.record:
        with open(REPO / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Tile list at scale ({time.strftime('%Y-%m-%d')}, {platform.node()})"
                     f"\n\n`python bench/tile_list_scale.py --tiles {args.tiles} --record`\n\n"
                     f"{table}\n")  # fmt: skip


if __name__ == "__main__":
    main()

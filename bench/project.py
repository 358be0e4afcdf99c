"""The size of a run over a domain polygon: tiles, chunks (= files), bytes and GPU-hours.

    python bench/project.py [--domain FILE] [--scales 1 0.5] [--rate TILES_PER_S] [--record]

Tiles are those of the global grid (``--origin``, ``--resolution``, ``--tile-size``,
``--stride``; the production defaults) whose box intersects the domain (EPSG:3413 unless
``--crs``). Counted exactly: the domain is rasterized on cells of g = gcd(tile, stride) px
laid on the grid, all_touched; GDAL's all_touched also marks a few cells up to ~0.002 cell
away from the polygon, so every cell it adds to the centre rasterization is checked with
shapely (``intersects``, the predicate a brute-force count uses); a tile touches the domain
when any of the (tile/g)^2 cells it covers does. ``tests/test_bench.py`` compares this with a
brute-force shapely count of every tile box, on a synthetic polygon and on a window of the
real domain.

Bytes: every chunk holding a tile gets one tile store of its whole *store box* (footprint +
the halo ``--scales`` need; ``--bands`` bytes per pixel, uint8) and one probability store of
its footprint (float32 probability + uint8 scale bits = 5 bytes per pixel). "est." figures
scale those raw bytes by the file size over the raw band bytes of the demo's stores (the
stores in ``--stores``, default runs/demo, made there when absent). Files: a tile store, a
probability store and a pieces file per chunk. Hours: tiles / the end-to-end tiles/s of the
last table bench/throughput.py recorded in bench/RESULTS.md, or ``--rate``. CPU core-hours per
stage: the chunk cores' pixels (or the tiles) over the one-process rate last recorded for it
(``cpu_rates`` lines: merge_ratio.py, stage_ratios.py, throughput.py --null-model), and the
wall time of the whole run on ``--machines`` machines of ``--cores`` cores with a GPU each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio import features

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from deepseg.config import (  # noqa: E402
    Experiment,
    GridConfig,
    InferenceConfig,
    InputConfig,
    ModelConfig,
    load_experiment,  # noqa: E402
)
from deepseg.formats import kea  # noqa: E402
from deepseg.geo.grid import TileGrid  # noqa: E402
from deepseg.stages.predict import predict  # noqa: E402
from deepseg.stages.tiles import create_tiles  # noqa: E402
from deepseg.storage.paths import finished_files  # noqa: E402
from deepseg.synthetic.demo import ensure_demo  # noqa: E402

DOMAIN = REPO.parent / "shared" / "data" / "domain" / "circumpolar_north_domain.geojson"
RESULTS = REPO / "bench" / "RESULTS.md"
RATES_MARK = "<!-- throughput "  # the machine-readable line bench/throughput.py records
CPU_MARK = "<!-- cpu_rates "  # per CPU stage, recorded by merge_ratio, stage_ratios, null_model
CPU_STAGES = {  # rate key -> (stage, unit of its rate, what the work is counted in)
    "create_tiles": ("create_tiles (aligned input)", "Mpx/s", "px"),
    "create_tiles_warped": ("create_tiles (warped input)", "Mpx/s", "px"),
    "predict_host_s2-minimal": ("predict, host side (s2-minimal)", "tiles/s", "tiles"),
    "predict_host_s1-none": ("predict, host side (s1-none)", "tiles/s", "tiles"),
    "merge": ("merge", "Mpx/s", "px"),
    "vectorize": ("vectorize", "Mpx/s", "px"),
}
ISSUE_TILES = 40_000_000  # the whole-Arctic job of the issue


def projection_grid(
    origin: tuple[float, float],
    resolution: float,
    tile_size: int,
    stride: int,
    chunk_tiles: int,
    scales: tuple[float, ...],
) -> TileGrid:
    """The grid (and its halo) an experiment with these settings would run on."""
    exp = Experiment(
        name="projection",
        input=InputConfig(rasters=(Path("domain"),)),
        model=ModelConfig(dir=Path("model")),
        grid=GridConfig(resolution, tile_size, stride, origin, chunk_tiles),
        inference=InferenceConfig(scales=scales),
        source=Path(__file__),
    )
    return TileGrid.from_experiment(exp)


def read_domain(path: Path, crs: str) -> shapely.Geometry:
    """The union of a vector file's geometries, in ``crs``."""
    return gpd.read_file(path).to_crs(crs).union_all()


def touching_cells(domain: shapely.Geometry, transform: Affine, shape: tuple[int, int]):
    """Bool (rows, cols): cells of ``transform`` whose closed square intersects ``domain``."""
    inside = features.rasterize([domain], shape, transform=transform, dtype="uint8") > 0
    touched = features.rasterize([domain], shape, transform=transform, all_touched=True) > 0
    rows, cols = np.nonzero(touched & ~inside)  # the boundary's cells: check each exactly
    left, top = transform.c + cols * transform.a, transform.f + rows * transform.e
    boxes = shapely.box(left, top + transform.e, left + transform.a, top)  # (x0, y0, x1, y1)
    shapely.prepare(domain)
    touched[rows, cols] = shapely.intersects(boxes, domain)
    return touched | inside  # a centre inside the polygon: its cell intersects it


def any_in_windows(cells: np.ndarray, size: int, step: int, count: int, axis: int) -> np.ndarray:
    """OR over windows of ``size`` cells every ``step`` along ``axis`` (``count`` windows)."""
    moved = np.moveaxis(cells, axis, 0)
    out = np.zeros((count, *moved.shape[1:]), dtype=bool)
    for k in range(size):
        out |= moved[k : k + step * count : step]
    return np.moveaxis(out, 0, axis)


def touching_tiles(domain: shapely.Geometry, grid: TileGrid) -> tuple[np.ndarray, int, int]:
    """Bool (rows, cols) of the tiles whose box intersects ``domain``, and the grid column
    and row of its first tile (a multiple of ``chunk_tiles``, so chunks are whole blocks)."""
    cols, rows = grid.tiles_touching(grid.box_of_bounds(domain.bounds))
    k = grid.chunk_tiles
    col0, row0 = cols.start // k * k, rows.start // k * k
    n_cols, n_rows = cols.stop - col0, rows.stop - row0
    g = math.gcd(grid.tile_size, grid.stride)
    size, step = grid.tile_size // g, grid.stride // g
    cell_m = g * grid.resolution
    corner = grid.tile_box(col0, row0)
    transform = Affine(
        cell_m, 0, grid.origin_x + corner.col0 * grid.resolution,
        0, -cell_m, grid.origin_y - corner.row0 * grid.resolution,
    )  # fmt: skip
    shape = ((n_rows - 1) * step + size, (n_cols - 1) * step + size)
    cells = touching_cells(domain, transform, shape)
    tiles = any_in_windows(any_in_windows(cells, size, step, n_rows, 0), size, step, n_cols, 1)
    return tiles, col0, row0


def count_chunks(tiles: np.ndarray, chunk_tiles: int) -> int:
    """Chunks holding at least one True tile; ``tiles`` starts on a chunk corner."""
    k = chunk_tiles
    rows, cols = -(-tiles.shape[0] // k) * k, -(-tiles.shape[1] // k) * k
    padded = np.zeros((rows, cols), dtype=bool)
    padded[: tiles.shape[0], : tiles.shape[1]] = tiles
    return int(padded.reshape(rows // k, k, cols // k, k).any(axis=(1, 3)).sum())


def store_ratios(run: Path) -> tuple[float, float, int]:
    """File bytes over raw bytes of a run's tile stores (raw: their bands) and probability
    stores (raw: 5 bytes per pixel), and how many probability stores were measured."""
    ratios = []
    for folder, raw_px_bytes in (("tiles", None), ("predictions", 5)):
        files = finished_files(run / folder, ".kea")
        if not files:
            raise SystemExit(f"{run / folder}: no stores to measure the compression on")
        raw = 0
        for path in files:
            with kea.open_kea(path) as (_, info):
                per_px = raw_px_bytes or info.count * info.dtype.itemsize
                raw += info.width * info.height * per_px
        ratios.append(sum(p.stat().st_size for p in files) / raw)
    return ratios[0], ratios[1], len(files)


def demo_stores(work: Path) -> Path:
    """A run folder with the demo's tile and probability stores (made there if absent)."""
    ensure_demo(REPO)
    exp = load_experiment(REPO / "experiments" / "demo.yaml")
    exp = dataclasses.replace(exp, output=dataclasses.replace(exp.output, path=work))
    if not finished_files(work / "predictions", ".kea"):
        create_tiles(exp)
        predict(exp)
    return work


def recorded_rates(results: Path) -> list[dict]:
    """The rows of the last throughput table in bench/RESULTS.md ([] when there is none)."""
    if not results.exists():
        return []
    lines = [ln for ln in results.read_text().splitlines() if ln.startswith(RATES_MARK)]
    if not lines:
        return []
    record = json.loads(lines[-1][len(RATES_MARK) : -len("-->")])
    return [{**row, "device": record["device"], "model": record["model"]} for row in record["rows"]]


def recorded_cpu_rates(results: Path) -> dict[str, float]:
    """Rate per CPU stage (one process), the latest of each ``cpu_rates`` line recorded."""
    rates: dict[str, float] = {}
    lines = results.read_text().splitlines() if results.exists() else []
    for line in (ln for ln in lines if ln.startswith(CPU_MARK)):
        rates.update(json.loads(line[len(CPU_MARK) : -len("-->")]))
    return rates


def cpu_table(tiles: int, area_px: float, rates: dict, gpu_rate: float | None, args) -> list:
    """Markdown rows: CPU core-hours per stage at ``rates``, and the run's wall time on
    ``args.machines`` machines of ``args.cores`` cores and one GPU each."""
    rows = ["| stage | rate, one process | core-hours |", "|---|---|---|"]
    core_h = {}
    for key, (stage, unit, counted) in CPU_STAGES.items():
        if key in rates:
            work = tiles if counted == "tiles" else area_px / 1e6
            core_h[key] = work / rates[key] / 3600
            rows.append(f"| {stage} | {rates[key]:,.1f} {unit} | {core_h[key]:,.0f} |")
    cpu_h = sum(core_h.get(k, 0) for k in ("create_tiles", "merge", "vectorize"))
    cpu_h += core_h.get("predict_host_s2-minimal", 0)
    n, cores = args.machines, args.cores
    gpu_h = tiles / gpu_rate / 3600 if gpu_rate else None
    wall = cpu_h / (n * cores) + (gpu_h / n if gpu_h else 0)
    gpu_text = f"{gpu_h:,.0f} GPU-hours" if gpu_h else "no GPU rate recorded"
    rows += ["", f"On {n} machines of {cores} cores and one GPU each: {gpu_text} and "
             f"{cpu_h:,.0f} CPU core-hours (aligned input, s2-minimal host side) take about "
             f"**{wall:,.1f} h** of wall time, stages in turn, every core busy."]  # fmt: skip
    return rows


def size_table(
    domain_km2: float, grid: TileGrid, bands: int, tiles: int, chunks: int, ratios: tuple
) -> list[str]:
    """Markdown rows of the run's size; ``ratios`` as ``store_ratios`` gives them."""
    store, foot = grid.chunk_store_box(0, 0), grid.chunk_footprint(0, 0)
    staged_tb = chunks * store.width * store.height * bands / 1e12
    predicted_tb = chunks * foot.width * foot.height * 5 / 1e12
    tile_ratio, prob_ratio, measured = ratios
    staged_est, predicted_est = staged_tb * tile_ratio, predicted_tb * prob_ratio
    store_px, foot_px = f"{store.width} x {store.height} px", f"{foot.width} x {foot.height} px"
    rows = [
        ("domain", f"{domain_km2:,.0f} km²"),
        ("tiles (box intersects the domain)", f"{tiles:,}"),
        ("chunks (one tile store and one probability store each)", f"{chunks:,}"),
        ("files = inodes (tile store, probability store, pieces)", f"{3 * chunks:,}"),
        (f"staged, raw ({store_px} x {bands} B per chunk)", f"{staged_tb:.2f} TB"),
        (f"staged, est. (x {tile_ratio:.2f}: demo tile stores)", f"{staged_est:.2f} TB"),
        (f"predicted, raw ({foot_px} x 5 B per chunk)", f"{predicted_tb:.2f} TB"),
        (f"predicted, est. (x {prob_ratio:.2f}: {measured} demo ones)", f"{predicted_est:.2f} TB"),
    ]  # fmt: skip
    return ["| quantity | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def hours_table(tiles: int, rates: list[dict]) -> list[str]:
    """Markdown rows: hours for this domain and for the issue's 40 M tiles at each rate."""
    rows = [
        "| device, model | mode | config | end-to-end tiles/s | hours, this domain | "
        "hours, 40 M tiles |",
        "|---|---|---|---|---|---|",
    ]
    for r in rates:
        rate = r["rate_tiles_s"]
        rows.append(
            f"| {r['device']}, {r['model']} | {r['mode']} | {r['config']} | {rate:,.1f} | "
            f"{tiles / rate / 3600:,.1f} | {ISSUE_TILES / rate / 3600:,.1f} |"
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domain", type=Path, default=DOMAIN, help="polygon file (any CRS)")
    p.add_argument("--crs", default="EPSG:3413", help="the grid's CRS")
    p.add_argument("--origin", type=float, nargs=2, default=(-4000100.0, 4100100.0))
    p.add_argument("--resolution", type=float, default=3.0, help="metres per pixel")
    p.add_argument("--tile-size", type=int, default=512, help="px")
    p.add_argument("--stride", type=int, default=256, help="px")
    p.add_argument("--chunk-tiles", type=int, default=16, help="tile strides per chunk side")
    p.add_argument("--scales", type=float, nargs="+", default=(1.0, 0.5), help="set the halo")
    p.add_argument("--bands", type=int, default=3, help="uint8 bands staged")
    p.add_argument("--stores", type=Path, help="run folder whose stores give the compression")
    p.add_argument("--work", type=Path, default=Path("/tmp/deepseg-bench"), help="scratch")
    p.add_argument("--rate", type=float, help="end-to-end tiles/s (default: bench/RESULTS.md)")
    p.add_argument("--results", type=Path, default=RESULTS, help="rates from, --record to")
    p.add_argument("--record", action="store_true", help="append the tables to --results")
    p.add_argument("--machines", type=int, default=10, help="for the wall time")
    p.add_argument("--cores", type=int, default=16, help="per machine, for the wall time")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Print (and with --record append) the run's size and hours; returns the text."""
    args = parse_args(argv)
    start = time.perf_counter()
    grid = projection_grid(
        tuple(args.origin), args.resolution, args.tile_size, args.stride, args.chunk_tiles,
        tuple(args.scales),
    )  # fmt: skip
    domain = read_domain(args.domain, args.crs)
    tiles, _, _ = touching_tiles(domain, grid)
    n_tiles, n_chunks = int(tiles.sum()), count_chunks(tiles, grid.chunk_tiles)
    counted_s = time.perf_counter() - start
    stores = args.stores or REPO / "runs" / "demo"
    if not finished_files(stores / "predictions", ".kea"):
        stores = demo_stores(args.work / "demo-stores")
    ratios = store_ratios(stores)
    table = size_table(domain.area / 1e6, grid, args.bands, n_tiles, n_chunks, ratios)
    given = {"device": "given", "model": "-", "mode": "-", "config": "-", "rate_tiles_s": args.rate}
    rates = [given] if args.rate else recorded_rates(args.results)
    hours = hours_table(n_tiles, rates) if rates else ["(no rate: pass --rate or record one)"]
    spec = [r["rate_tiles_s"] for r in rates if r.get("config") in ("s2-minimal", "-")]
    area_px = n_chunks * grid.chunk_px**2  # chunk cores: what merge and vectorize cover
    cpu = cpu_table(
        n_tiles, area_px, recorded_cpu_rates(args.results), max(spec, default=None), args
    )
    command = "python bench/project.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            f"Domain {args.domain.name}; grid origin {tuple(args.origin)}, {args.resolution:g} m, "
            f"tile {grid.tile_size} px, stride {grid.stride} px, chunk {grid.chunk_tiles}x"
            f"{grid.chunk_tiles} tiles, halo {grid.halo_px} px (scales {list(args.scales)}); "
            f"tiles counted in {counted_s:.1f} s.",
            "",
            *table,
            "",
            *hours,
            "",
            *cpu,
        ]
    )
    print(text)
    if args.record:
        with open(args.results, "a") as fh:
            fh.write(f"\n## Run size ({time.strftime('%Y-%m-%d')})\n\n`{command.strip()}`\n\n")
            fh.write(text + "\n")
    return text


if __name__ == "__main__":
    main()

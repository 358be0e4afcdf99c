"""The benchmarks in bench/: the run-size projection counts tiles exactly (against a brute-force
shapely count), and the throughput benchmark runs the real predict stage and reports it."""

from __future__ import annotations

import json
import re
import sys

import h5py
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon, Polygon

from conftest import REPO, shared_file, write_model
from deepseg.storage.paths import RunPaths
from deepseg.stores.tile_store import read_tile_store

sys.path.insert(0, str(REPO / "bench"))
import project  # noqa: E402
import stage_ratios  # noqa: E402
import throughput  # noqa: E402

ORIGIN = (-4000100.0, 4100100.0)
AT_TILE = (2400, 3600)  # grid column and row of the synthetic domain's reference tile


def brute_force_tiles(domain: shapely.Geometry, grid) -> set[tuple[int, int]]:
    """Every tile near the domain whose box (crs units) intersects it, tested one by one."""
    cols, rows = grid.tiles_touching(grid.box_of_bounds(domain.bounds))
    return {
        (c, r)
        for r in range(rows.start - 1, rows.stop + 1)
        for c in range(cols.start - 1, cols.stop + 1)
        if shapely.box(*grid.bounds(grid.tile_box(c, r))).intersects(domain)
    }


def projected_tiles(domain: shapely.Geometry, grid) -> set[tuple[int, int]]:
    tiles, col0, row0 = project.touching_tiles(domain, grid)
    return {(col0 + int(c), row0 + int(r)) for r, c in zip(*np.nonzero(tiles), strict=True)}


def synthetic_domain(grid, cell_px: int) -> MultiPolygon:
    """A star with a hole, a speck inside one cell, and a quadrilateral whose top edge runs
    within 0.002 cell of a lattice line, where GDAL's all_touched marks cells it does not
    touch; coordinates in lattice cells of ``cell_px`` (y up), placed at tile ``AT_TILE``."""
    rng = np.random.default_rng(5)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 23))
    radii = rng.uniform(3, 11, 23)
    star = Polygon(np.column_stack([15.3 + radii * np.cos(angles), 14.6 + radii * np.sin(angles)]))
    star = star.difference(shapely.Point(15.1, 14.2).buffer(1.7)).buffer(0)
    edge = Polygon([(30.78310819, 31.00183586), (34.32738968, 30.99620852), (34.3, 26.4)])
    speck = Polygon([(40.31, 5.42), (40.62, 5.47), (40.45, 5.71)])
    res, (col, row) = grid.resolution, (AT_TILE[0] * grid.stride, AT_TILE[1] * grid.stride)
    x0, y0 = grid.origin_x + col * res, grid.origin_y - (row + 45 * cell_px) * res

    def to_map(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([x0 + xy[:, 0] * cell_px * res, y0 + xy[:, 1] * cell_px * res])

    return MultiPolygon([shapely.transform(p, to_map) for p in (star, edge, speck)])


@pytest.mark.parametrize("tile, stride", [(512, 256), (512, 192), (256, 256)])
def test_projection_counts_the_tiles_and_chunks_a_brute_force_count_finds(tile, stride):
    grid = project.projection_grid(ORIGIN, 3.0, tile, stride, 4, (1.0, 0.5))
    cell = int(np.gcd(tile, stride))
    domain = synthetic_domain(grid, cell)
    expected = brute_force_tiles(domain, grid)
    assert projected_tiles(domain, grid) == expected
    tiles, _, _ = project.touching_tiles(domain, grid)
    assert project.count_chunks(tiles, 4) == len({grid.chunk_of_tile(*t) for t in expected})
    # the near-horizontal edge: all_touched alone marks cells the domain does not touch
    corner = grid.tile_box(*AT_TILE)
    x0, y0 = ORIGIN[0] + corner.col0 * 3.0, ORIGIN[1] - corner.row0 * 3.0
    transform = Affine(cell * 3.0, 0, x0, 0, -cell * 3.0, y0)
    marked = features.rasterize([domain], (50, 50), transform=transform, all_touched=True)
    assert marked.sum() > project.touching_cells(domain, transform, (50, 50)).sum()


def test_projection_counts_a_window_of_the_real_domain_exactly():
    domain = project.read_domain(
        shared_file("domain/circumpolar_north_domain.geojson"), "EPSG:3413"
    )
    x, y = shapely.line_interpolate_point(domain.boundary, 0.3, normalized=True).coords[0]
    window = domain.intersection(shapely.box(x - 40_000, y - 40_000, x + 40_000, y + 40_000))
    grid = project.projection_grid(ORIGIN, 3.0, 512, 256, 16, (1.0, 0.5))
    expected = brute_force_tiles(window, grid)
    assert len(expected) > 2000
    assert projected_tiles(window, grid) == expected


def test_throughput_runs_the_predict_stage_and_prints_its_table(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    argv = [
        "--model", str(write_model(tmp_path / "model")), "--device", "cpu",
        "--tile-size", "64", "--stride", "32", "--chunk-tiles", "2", "--chunks", "4",
        "--configs", "s1-none", "s2-minimal", "--batch", "3", "--repeat", "1",
        "--model-seconds", "0", "--work", str(tmp_path / "work"),
        "--results", str(results), "--record",
    ]  # fmt: skip
    rows = throughput.main(argv)
    printed = capsys.readouterr().out
    assert "| mode | config | passes/tile | tiles | model-only tiles/s | end-to-end tiles/s |" in (
        printed
    )
    assert [(r["config"], r["passes"], r["tiles"], r["chunks"]) for r in rows] == [
        ("s1-none", 1, 16, 4),  # 4 chunks of 2 x 2 tiles, every tile over the scene
        ("s2-minimal", 4, 16, 4),
    ]
    for row in rows:  # model-only = forward passes/s over passes per tile; ratios from them
        assert row["model_tiles_s"] * row["passes"] == pytest.approx(row["forward_tiles_s"])
        assert row["ratio"] == pytest.approx(row["e2e_tiles_s"] / row["model_tiles_s"])
        assert row["steady_ratio"] == pytest.approx(row["steady_tiles_s"] / row["model_tiles_s"])
        assert row["hours_40M"] == pytest.approx(40e6 / row["steady_tiles_s"] / 3600)
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"| fp32 | {row['config']}"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4:10] == [
            f"{row['model_tiles_s']:,.1f}",
            f"{row['e2e_tiles_s']:,.1f}",
            f"{row['ratio']:.2f}",
            f"{row['steady_tiles_s']:,.1f}",
            f"{row['steady_ratio']:.2f}",
            "n/a",  # GPU utilization, on CPU
        ]
    runs = sorted((tmp_path / "work").glob("*/run-scales-*"))
    assert [len(list((run / "predictions").glob("c*.kea"))) for run in runs] == [4, 4]
    recorded = project.recorded_rates(results)
    assert [r["rate_tiles_s"] for r in recorded] == [r["rate_tiles_s"] for r in rows]
    assert "`python bench/throughput.py --model" in results.read_text()

    domain = tmp_path / "domain.geojson"
    grid = project.projection_grid(ORIGIN, 3.0, 512, 256, 16, (1.0, 0.5))
    shape = synthetic_domain(grid, 256)
    domain.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(shape)}
    ], "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3413"}}}))  # fmt: skip
    text = project.main(
        ["--domain", str(domain), "--stores", str(runs[0]), "--results", str(results)]
    )
    n_tiles = len(brute_force_tiles(shape, grid))
    assert f"| tiles (box intersects the domain) | {n_tiles:,} |" in text
    hours = re.findall(r"\| s2-minimal \| [\d,.]+ \| ([\d,.]+) \|", text)
    assert hours == [f"{n_tiles / rows[1]['rate_tiles_s'] / 3600:,.1f}"]

    # CPU core-hours: the latest rate recorded per stage; wall time on N machines
    with open(results, "a") as fh:
        fh.write('<!-- cpu_rates {"merge": 1.0, "vectorize": 2.0} -->\n')
        fh.write('<!-- cpu_rates {"merge": 4.0, "create_tiles": 8.0} -->\n')
        fh.write('<!-- cpu_rates {"predict_host_s2-minimal": 100.0} -->\n')
    argv = ["--domain", str(domain), "--stores", str(runs[0]), "--results", str(results)]
    text = project.main([*argv, "--machines", "3", "--cores", "5"])
    chunks = int(
        re.search(r"\| chunks \(one tile store[^|]*\| ([\d,]+) \|", text)[1].replace(",", "")
    )
    mpx = chunks * grid.chunk_px**2 / 1e6
    expected = {"merge": mpx / 4 / 3600, "vectorize": mpx / 2 / 3600,
                "create_tiles": mpx / 8 / 3600, "host": n_tiles / 100 / 3600}  # fmt: skip
    for stage, rate, key in [("merge", "4.0 Mpx/s", "merge"), ("vectorize", "2.0 Mpx/s",
                             "vectorize"), ("create_tiles (aligned input)", "8.0 Mpx/s",
                             "create_tiles"), ("predict, host side (s2-minimal)",
                             "100.0 tiles/s", "host")]:  # fmt: skip
        assert f"| {stage} | {rate} | {expected[key]:,.0f} |" in text
    wall = sum(expected.values()) / 15 + n_tiles / rows[1]["rate_tiles_s"] / 3600 / 3
    assert f"about **{wall:,.1f} h** of wall time" in text


def test_stage_ratios_compare_deepseg_and_its_library_on_the_same_work(tmp_path):
    # vectorize: 2 x 2 chunks, blobs cut by chunk edges; shapes on the region's mask agrees
    row = stage_ratios.vectorize_case(tmp_path, 4608, 1, profile=False)
    ours, theirs = row["counts"]
    assert ours == theirs > 50
    assert row["areas"][0] == pytest.approx(row["areas"][1], rel=1e-9)
    # create_tiles: the library's windows hold, pixel for pixel, what the tile stores staged
    # (aligned), and the default WarpedVRT what DeepSeg's exact warp made (shifted input; the
    # same CRS, so GDAL's approximate transformer is exact too)
    grid_keys = {"tile_size": 64, "stride": 32, "chunk_tiles": 2}
    rows = stage_ratios.tiles_cases(tmp_path, 9, 1, grid_keys, profile=False)  # 2 x 2 windows
    for case in rows:
        box = case["box"]
        staged = np.zeros((3, box.height, box.width), dtype=np.uint8)
        for path in sorted(case["library_out"].glob("*.h5")):
            r, c = (int(v[1:]) for v in path.stem.split("_"))
            with h5py.File(path) as f:
                bands = np.stack([f[f"band{i}"][()] for i in (1, 2, 3)])
            staged[:, r : r + bands.shape[1], c : c + bands.shape[2]] = bands
        stores = RunPaths.of(case["run"]).tile_stores()
        assert len(stores) == 9 and len(list(case["library_out"].glob("*.h5"))) == 4
        compared = 0
        for path in stores:
            store = read_tile_store(path)
            inner = store.box.intersection(box)
            (rs, cs), (rb, cb) = inner.slices_in(store.box), inner.slices_in(box)
            ours, theirs = store.pixels[:, rs, cs].astype(int), staged[:, rb, cb].astype(int)
            valid = store.valid[rs, cs]
            assert valid.mean() > 0.9
            assert (ours == theirs)[:, valid].all()
            compared += valid.sum()
        assert compared >= box.width * box.height * 0.9
    assert rows[0]["px"] > rows[1]["px"]  # the shifted scene lost its outer ring


def test_null_model_runs_the_predict_stage_and_reports_rates_per_core(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    argv = [
        "--null-model", "--model", str(write_model(tmp_path / "model")), "--device", "cpu",
        "--tile-size", "64", "--stride", "32", "--chunk-tiles", "2", "--chunks", "2",
        "--configs", "s1-none", "--io-workers", "0", "1", "--batch", "3",
        "--work", str(tmp_path / "work"), "--results", str(results), "--record",
    ]  # fmt: skip
    rows = throughput.main(argv)
    printed = capsys.readouterr().out
    assert [(r["config"], r["io_workers"], r["tiles"], r["chunks"]) for r in rows] == [
        ("s1-none", 0, 8, 2),
        ("s1-none", 1, 8, 2),
    ]
    for row in rows:
        assert row["e2e_tiles_s"] > 0 and row["per_busy_core"] > 0 and row["per_core"] > 0
        assert row["per_busy_core"] == pytest.approx(row["tiles"] / row["cpu_s"])
    assert "| config | io_workers | tiles | wall s | end-to-end tiles/s |" in printed
    assert "| function | calls | own s | share | cumulative s |" in printed
    assert rows[0]["profile"]["tiles"] == 8
    assert "| hand-over of both stores, CPU ms per tile (io_workers > 0) |" in printed
    handover = rows[0]["profile"]["handover"]
    assert list(handover) == ["pickled", "shared memory"]
    assert all(ms["main"] > 0 and ms["io"] > 0 for ms in handover.values())
    text = results.read_text()
    assert "## Null-model ceiling (" in text and "`python bench/throughput.py --null-model" in text

"""Vectorize at scale: one polygon per object however chunks and regions cut it, exact joins."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize

from conftest import lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.stages.layers import binary_entropy
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize

AT = (32 * 70 + 13, 32 * 90 + 7)  # grid (col, row) of the raster's pixel (0, 0)
H, W = 260, 300
SPLIT_COL = 150  # the two regions meet here (raster column)


def shapes() -> dict[str, shapely.Geometry]:
    """Objects in raster pixel coordinates (x = column, y = row), at least 3 px apart."""
    return {
        "disc": shapely.Point(60, 70).buffer(25, quad_segs=64),
        "ring": shapely.Point(215, 75)
        .buffer(32, quad_segs=64)
        .difference(shapely.Point(215, 75).buffer(12, quad_segs=64)),
        "L": shapely.union_all([shapely.box(100, 150, 190, 170), shapely.box(100, 110, 118, 170)]),
        "edge_disc": shapely.Point(60, 255).buffer(30, quad_segs=64),  # cut by the bottom edge
        "small": shapely.box(250, 200, 256, 205),
    }


def scene(folder: Path) -> Path:
    """Band 1 bright (200) where a pixel's centre is inside an object, else dark (20)."""
    folder.mkdir(parents=True, exist_ok=True)
    inside = rasterize(list(shapes().values()), out_shape=(H, W), transform=Affine.identity())
    data = np.empty((3, H, W), dtype=np.uint8)
    data[0] = np.where(inside > 0, 200, 20)
    data[1], data[2] = 110, 120  # at the test model's means: they add nothing to the logit
    return write_raster(folder / "shapes.tif", data, lattice_transform(*AT))


def to_map(geom: shapely.Geometry) -> shapely.Geometry:
    t = lattice_transform(*AT)
    return shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def run(folder: Path, model_dir: Path, chunk_tiles: int, **sections) -> Path:
    x0, y0 = lattice_transform(*AT) @ (0, 0)
    regions = {
        "west": [x0, y0 - 3 * H, x0 + 3 * SPLIT_COL, y0],
        "east": [x0 + 3 * SPLIT_COL, y0 - 3 * H, x0 + 3 * W, y0],
    }
    exp = load_experiment(
        write_experiment(
            folder,
            [scene(folder)],
            model_dir,
            grid={"tile_size": 64, "stride": 32, "chunk_tiles": chunk_tiles},
            regions=regions,
            **sections,
        )
    )
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp)
    return folder / "out"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request) -> dict[int, Path]:
    from conftest import write_model

    root = tmp_path_factory.mktemp("polygons")
    model = write_model(root / "model")
    return {k: run(root / f"k{k}", model, k) for k in (1, 2, 3)}


def read(out: Path, layer: str = "rts_predictions") -> gpd.GeoDataFrame:
    return gpd.read_file(out / "vectors" / "rts_predictions.gpkg", layer=layer)


def test_one_polygon_per_object_with_true_measurements(runs):
    frame = read(runs[1])  # 32 px chunk cores: every object but one is cut by chunk borders
    raster = to_map(shapely.box(0, 0, W, H))
    truths = {k: to_map(g).intersection(raster) for k, g in shapes().items()}
    assert len(frame) == len(truths)
    for name, truth in truths.items():
        matches = frame[frame.intersects(truth)]
        assert len(matches) == 1, name
        poly = matches.geometry.iloc[0]
        assert poly.geom_type == "Polygon" and poly.is_valid
        # within one pixel-perimeter of the true area, centroid within a pixel
        row = matches.iloc[0]
        assert abs(row.area_m2 - truth.area) <= truth.length * 3.0, name
        assert row.area_m2 == pytest.approx(poly.area)
        assert poly.centroid.distance(truth.centroid) < 3.0, name
    ring = frame[frame.intersects(truths["ring"])].geometry.iloc[0]
    assert len(ring.interiors) == 1  # the hole is kept, and no seam lines: one ring, no slivers
    assert sum(len(g.interiors) for g in frame.geometry) == 1  # no other shape has a hole


def test_regions_take_each_object_once(runs):
    frame = read(runs[2])
    by_name = {n: frame[frame.intersects(to_map(g))].iloc[0] for n, g in shapes().items()}
    # the L straddles the region border at column 150 with most of its area to the west
    assert by_name["L"]["region"] == "west"
    assert (by_name["ring"]["region"], by_name["disc"]["region"]) == ("east", "west")
    assert frame.rts_id.is_unique


def test_only_pieces_cut_by_a_core_edge_wait_for_the_join(runs):
    """Closed pieces go straight to the output; only open ones are held for joining."""
    for k, out in runs.items():
        counts = json.loads((out / "logs" / "inference_log.json").read_text())["stages"]
        pieces, opened = counts["vectorize"]["pieces"], counts["vectorize"]["open_pieces"]
        assert 0 < opened < pieces if k > 1 else 0 < opened <= pieces


def test_chunking_does_not_change_the_polygons(runs):
    frames = [read(runs[k]).sort_values("rts_id").reset_index(drop=True) for k in (1, 2, 3)]
    for other in frames[1:]:
        assert other.rts_id.tolist() == frames[0].rts_id.tolist()
        np.testing.assert_allclose(other.area_m2, frames[0].area_m2, rtol=1e-6)
        assert all(
            a.normalize().equals_exact(b.normalize(), 0)
            for a, b in zip(other.geometry, frames[0].geometry, strict=True)
        )
        assert other.tile_ids.tolist() == frames[0].tile_ids.tolist()


def test_footprints_cover_the_predicted_area_once(runs):
    for out in runs.values():
        foot = read(out, "footprints")
        with rasterio.open(out / "merged" / "west_prob.tif") as west:
            valid_px = (west.read(1) != -1).sum()
        with rasterio.open(out / "merged" / "east_prob.tif") as east:
            valid_px += (east.read(1) != -1).sum()
        assert foot.chunk_id.is_unique
        assert shapely.union_all(foot.geometry).area == pytest.approx(valid_px * 9.0)
        assert foot.area.sum() == pytest.approx(valid_px * 9.0)  # they do not overlap


def test_pieces_of_chunks_no_longer_in_the_units_are_left_out(tmp_path, model_dir):
    """A pieces file left by an earlier run (e.g. regions since narrowed) is not gathered."""
    import shutil

    out = run(tmp_path, model_dir, 2)
    before = read(out)
    pieces = sorted((out / "vectors" / "pieces").glob("*.fgb"))
    shutil.copy(pieces[0], pieces[0].with_name("c09999_r09999.fgb"))  # no such chunk here
    vectorize(load_experiment(tmp_path / "experiment.yaml"), force=True)
    after, feet = read(out), read(out, "footprints")
    assert "c09999_r09999" not in set(feet.chunk_id)
    assert after.rts_id.tolist() == before.rts_id.tolist()


def test_uncertainty_and_scales_products(tmp_path, model_dir):
    out = run(tmp_path, model_dir, 2, merge={"products": ["uncertainty", "scales"]})
    with rasterio.open(out / "merged" / "west_prob.tif") as src:
        prob = src.read(1)
    with rasterio.open(out / "merged" / "west_uncertainty.tif") as src:
        entropy = src.read(1)
        assert (src.nodata, src.dtypes[0]) == (-1.0, "float32")
    with rasterio.open(out / "merged" / "west_scales.tif") as src:
        scales = src.read(1)
    valid = prob != -1
    p = prob[valid].astype(np.float64)
    expected = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(entropy[valid], expected, rtol=1e-5, atol=1e-6)
    assert (entropy[~valid] == -1).all()
    np.testing.assert_array_equal(scales[valid], (prob[valid] >= 0.5).astype(np.uint8))
    assert (scales[~valid] == 255).all()
    assert binary_entropy(np.array([0.0, 0.5, 1.0, -1.0], np.float32)).tolist() == [0, 1, 0, -1]

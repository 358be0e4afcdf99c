"""The merged COGs and the polygons: valid formats, exact measurements, safe reruns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

from conftest import lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import COLUMNS, vectorize
from deepseg.storage.partials import atomic_folder

AT = (2048 + 5, 4096 + 9)  # grid (col, row) of the raster's pixel (0, 0)


def shapes_scene(folder: Path) -> tuple[Path, np.ndarray]:
    """Band 1 bright (200) on known shapes over a dark (20) background, as seen by the
    pointwise test model: bright pixels come out at probability > 0.5, dark ones < 0.5."""
    data = np.full((3, 200, 240), 20, dtype=np.uint8)
    data[1], data[2] = 110, 120  # bands 2 and 3 at their means: they add nothing to the logit
    shape = np.zeros((200, 240), dtype=bool)
    shape[10:20, 10:30] = True  # 10 x 20 rectangle
    shape[50:80, 50:80] = True  # 30 x 30 square with a 10 x 10 hole
    shape[60:70, 60:70] = False
    shape[100:160, 120:130] = True  # L shape: 60 x 10 + 10 x 40
    shape[150:160, 130:170] = True
    shape[0:5, 200:240] = True  # touches the raster's top and right edges
    data[0][shape] = 200
    data[:, 190:, :30] = 0  # nodata corner
    return write_raster(folder / "shapes.tif", data, lattice_transform(*AT)), shape


def run_all(experiment: Path, force: bool = False) -> None:
    exp = load_experiment(experiment)
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp, force=force)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shapes_run(tmp_path, model_dir):
    scene, shape = shapes_scene(tmp_path)
    exp = write_experiment(tmp_path, [scene], model_dir, grid={"chunk_tiles": 1})
    run_all(exp)
    return tmp_path / "out", exp, shape


def test_rasters_are_valid_cogs_on_the_lattice(shapes_run):
    out, _, shape = shapes_run
    for name, dtype, nodata in (("all_prob", "float32", -1.0), ("all_binary", "uint8", 255)):
        path = out / "merged" / f"{name}.tif"
        is_valid, errors, _ = cog_validate(str(path))
        assert is_valid, errors
        with rasterio.open(path) as src:
            assert (src.dtypes[0], src.nodata, src.crs.to_epsg()) == (dtype, nodata, 3413)
            assert src.block_shapes[0] == (512, 512) or max(src.shape) < 512
            assert src.transform == lattice_transform(*AT)
            assert src.profile["compress"].lower() == "lzw"
            values = src.read(1)
    assert set(np.unique(values)) == {0, 1, 255}
    np.testing.assert_array_equal(values[:190][shape[:190]], 1)


def test_polygons_have_exact_measurements(shapes_run):
    out, _, _ = shapes_run
    frame = gpd.read_file(out / "vectors" / "rts_predictions.gpkg", layer="rts_predictions")
    assert set(COLUMNS) <= set(frame.columns)
    assert frame.crs.to_epsg() == 3413
    areas = sorted(frame["area_m2"].round(6))
    assert areas == sorted(a * 9.0 for a in (10 * 20, 30 * 30 - 100, 600 + 400, 5 * 40))
    ring = frame.loc[frame["area_m2"] == 800 * 9.0].iloc[0]
    assert len(ring.geometry.interiors) == 1  # the hole is kept
    assert ring["perimeter_m"] == pytest.approx((4 * 30 + 4 * 10) * 3.0)
    x0, y0 = lattice_transform(*AT) @ (65, 65)  # the ring's centroid: the square's centre
    lon, lat = Transformer.from_crs(3413, 4326, always_xy=True).transform(x0, y0)
    assert (ring["centroid_lon"], ring["centroid_lat"]) == pytest.approx((lon, lat), abs=1e-9)
    assert ring["rts_id"] == f"rts_{AT[0] + 50:07d}_{AT[1] + 50:07d}"
    assert ring["detection_scale"] == "1.0"
    assert 0.5 < ring["mean_prob"] <= ring["max_prob"] <= 1.0
    tiles = ring["tile_ids"].split(",")
    assert "c000065_r000129" in tiles  # tile (65, 129) covers grid pixels 2080.. x 4128..


def test_rerun_skips_and_force_redoes_identically(shapes_run):
    out, exp, _ = shapes_run
    products = [
        out / "merged" / "all_prob.tif",
        out / "merged" / "all_binary.tif",
        *sorted((out / "tiles").glob("*.kea")),
        *sorted((out / "predictions").glob("*.kea")),
    ]
    before = {p: (p.stat().st_mtime_ns, sha256(p)) for p in products}
    run_all(exp)
    assert {p: (p.stat().st_mtime_ns, sha256(p)) for p in products} == before
    run_all(exp, force=True)
    merged = products[:2]
    assert {p: sha256(p) for p in merged} == {p: before[p][1] for p in merged}
    assert not list(out.rglob("*.partial*"))


def test_min_area_drops_specks(tmp_path, model_dir):
    scene, _ = shapes_scene(tmp_path)
    exp = write_experiment(tmp_path, [scene], model_dir, vectorize={"min_area_m2": 1900.0})
    run_all(exp)
    frame = gpd.read_file(
        tmp_path / "out" / "vectors" / "rts_predictions.gpkg", layer="rts_predictions"
    )
    assert sorted(frame["area_m2"]) == [800 * 9.0, 1000 * 9.0]  # the 200 px shapes are gone


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing shows before it is complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]

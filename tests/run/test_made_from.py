"""Reruns after an edited experiment: what changed is redone, nothing stale is kept as done,
and what cannot be redone in place is refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import lattice_transform, write_experiment, write_model, write_raster
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.geo.grid import TileGrid
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage.paths import RunPaths
from deepseg.stores.tile_store import read_tile_ids

STAGES = (create_tiles, predict, merge, vectorize)


def scene(folder: Path) -> Path:
    """A 150 x 170 px 3-band raster whose pixel (0, 0) is grid pixel (200, 330)."""
    data = np.random.default_rng(5).integers(1, 255, size=(3, 150, 170), dtype=np.uint8)
    return write_raster(folder / "scene.tif", data, lattice_transform(200, 330))


def run_all(experiment: Path, **overrides) -> list[dict]:
    exp = load_experiment(experiment)
    return [stage(exp, **overrides) for stage in STAGES]


def merged(folder: Path) -> dict[str, np.ndarray]:
    """The merged rasters of a run, and the polygons' areas (m², sorted)."""
    import geopandas as gpd

    out = RunPaths(folder / "out")
    found = {}
    for name in ("prob", "binary"):
        with rasterio.open(out.merged / f"all_{name}.tif") as src:
            found[name] = src.read(1)
    found["areas"] = np.sort(gpd.read_file(out.polygons, layer="rts_predictions").area.to_numpy())
    return found


def assert_same_outputs(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def write_tile_list(path: Path, experiment: Path, count: int) -> Path:
    """A tile list of the first ``count`` tiles staged by a whole run of ``experiment``."""
    exp = load_experiment(experiment)
    grid = TileGrid.from_experiment(exp)
    ids = sorted(t for p in RunPaths.of(exp).tile_stores() for t in read_tile_ids(p))[:count]
    rows = ["tile_id,minx,miny,maxx,maxy"]
    for tile_id in ids:
        col, row = TileGrid.parse_tile_id(tile_id)
        rows.append(
            ",".join([tile_id, *(f"{v:.1f}" for v in grid.bounds(grid.tile_box(col, row)))])
        )
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_pilot_on_a_tile_list_then_the_whole_run_in_the_same_folder(tmp_path, model_dir):
    """A run that first covered 2 listed tiles, rerun without the list, equals a whole run:
    the chunks whose listed tiles changed are restaged, their probabilities redone, the
    merged rasters and polygons remade."""
    raster = scene(tmp_path)
    whole = write_experiment(tmp_path / "whole", [raster], model_dir)
    run_all(whole)
    tiles = write_tile_list(tmp_path / "pilot.csv", whole, 2)
    pilot = write_experiment(tmp_path / "run", [raster], model_dir, grid={"tile_list": str(tiles)})
    run_all(pilot)
    assert merged(tmp_path / "run")["prob"].shape != merged(tmp_path / "whole")["prob"].shape
    full = write_experiment(tmp_path / "run", [raster], model_dir)
    summaries = run_all(full)
    assert summaries[0]["skipped"] < summaries[0]["units"]  # restaged, not kept
    assert_same_outputs(merged(tmp_path / "run"), merged(tmp_path / "whole"))


def test_a_changed_threshold_remakes_merge_and_vectorize_but_not_predict(tmp_path, model_dir):
    raster = scene(tmp_path)
    run_all(write_experiment(tmp_path, [raster], model_dir, merge={"threshold": 0.5}))
    before = merged(tmp_path)
    experiment = write_experiment(tmp_path, [raster], model_dir, merge={"threshold": 0.7})
    tiles, predicted, remerged, traced = run_all(experiment)
    assert tiles["skipped"] == tiles["units"] and predicted["skipped"] == predicted["units"]
    assert remerged["skipped"] == 0 and traced["skipped"] == 0
    after = merged(tmp_path)
    np.testing.assert_array_equal(after["prob"], before["prob"])
    valid = after["prob"] >= 0
    np.testing.assert_array_equal(after["binary"][valid], after["prob"][valid] >= 0.7)
    assert after["binary"][valid].sum() < before["binary"][valid].sum()
    assert after["areas"].sum() < before["areas"].sum()


def test_merge_and_vectorize_refuse_while_predict_has_chunks_left(tmp_path, model_dir):
    exp = load_experiment(write_experiment(tmp_path, [scene(tmp_path)], model_dir))
    create_tiles(exp)
    predict(exp, shard=(0, 2))
    for stage in (merge, vectorize):
        with pytest.raises(DeepSegError, match=r"predict has not finished \d+ chunk\(s\)"):
            stage(exp)
    assert not RunPaths.of(exp).merged.exists()
    predict(exp)
    merge(exp)  # now it can


def test_another_chunking_in_the_same_folder_is_refused_before_staging(tmp_path, model_dir):
    raster = scene(tmp_path)
    create_tiles(load_experiment(write_experiment(tmp_path, [raster], model_dir)))
    before = sorted(p.name for p in RunPaths(tmp_path / "out").tiles.iterdir())
    other = write_experiment(tmp_path, [raster], model_dir, grid={"chunk_tiles": 3})
    with pytest.raises(DeepSegError, match="made on another grid .* a new output.path"):
        create_tiles(load_experiment(other))
    assert sorted(p.name for p in RunPaths(tmp_path / "out").tiles.iterdir()) == before


def test_a_model_that_cannot_read_the_bands_is_refused_before_staging(tmp_path, model_dir):
    experiment = write_experiment(tmp_path, [scene(tmp_path)], model_dir, input={"bands": [1]})
    with pytest.raises(DeepSegError, match="3 mean / 3 std values but input.bands selects 1"):
        create_tiles(load_experiment(experiment))
    assert not (tmp_path / "out" / "tiles").exists()


def test_merge_refuses_a_map_of_two_models_until_predict_has_redone_every_chunk(tmp_path):
    first = write_model(tmp_path / "first")
    second = write_model(tmp_path / "second", threshold=0.5, mean=[90.0, 110.0, 120.0])
    path = write_experiment(tmp_path, [scene(tmp_path)], first)
    run_all(path)
    exp = load_experiment(write_experiment(tmp_path, [scene(tmp_path)], second))
    predict(exp, shard=(0, 2))  # half the chunks now hold the second model's predictions
    with pytest.raises(DeepSegError, match=r"predicted with another model or other settings"):
        merge(exp)
    predict(exp)  # the rest
    assert merge(exp)["done"] == 1


def test_a_chunk_killed_or_failed_while_redone_is_not_kept_with_its_old_store(tmp_path):
    from deepseg.run.journal import Journal
    from deepseg.run.manifest import fold
    from deepseg.stages.predict import predictions_made_from

    first = write_model(tmp_path / "first")
    second = write_model(tmp_path / "second", threshold=0.5, mean=[90.0, 110.0, 120.0])
    run_all(write_experiment(tmp_path, [scene(tmp_path)], first))
    exp = load_experiment(write_experiment(tmp_path, [scene(tmp_path)], second))
    paths = RunPaths.of(exp)
    chunks = sorted(fold(paths, "predict"))
    killed, failing = chunks[0], chunks[-1]
    old = {c: paths.prob_store(c).read_bytes() for c in (killed, failing)}
    # a worker killed while redoing ``killed``: its start is recorded, its old store in place
    Journal(paths, "predict", "killed-run").record(killed, "running")
    tiles = paths.tile_store(failing)
    saved = tiles.read_bytes()
    tiles.write_bytes(b"not a store")  # redoing ``failing`` fails, its old store stays
    with pytest.raises(DeepSegError, match=r"1 unit\(s\) failed"):
        predict(exp)
    assert fold(paths, "predict")[failing].status == "failed"
    tiles.write_bytes(saved)
    predict(exp)  # neither is taken for done because its (old) store is on disk
    states, current = fold(paths, "predict"), predictions_made_from(exp)
    for chunk in (killed, failing):
        assert states[chunk].status == "done" and states[chunk].made_from == current(chunk)
        assert paths.prob_store(chunk).read_bytes() != old[chunk], chunk
    assert merge(exp)["done"] == 1

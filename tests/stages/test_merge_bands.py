"""``merge.part_px``: a region assembled in row bands by separate tasks (stage merge_parts)
gives the COGs, KEA rasters and preview of the one-task merge, to the byte."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio

from conftest import write_experiment
from deepseg.config import ConfigError, load_experiment
from deepseg.geo.grid import PixelBox
from deepseg.stages.merge import merge, part_units
from deepseg.stages.merge_bands import bands
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import RunPaths
from shared_scenes import offgrid_scene

PRODUCTS = ["uncertainty", "scales", "preview"]


def with_part_px(exp, part_px):
    return dataclasses.replace(exp, merge=dataclasses.replace(exp.merge, part_px=part_px))


def merged_bytes(exp) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(RunPaths.of(exp).merged.glob("all_*"))}


def manifest(exp, stage):
    """Unit -> record of the stage's manifest (as written, a JSON list of records)."""
    records = json.loads((RunPaths.of(exp).logs / f"{stage}_manifest.json").read_text())
    return {r["unit"]: r for r in records["units"]}


@pytest.mark.parametrize("method", ["max", "sinusoidal"])
def test_banded_merge_is_byte_identical_to_one_task(tmp_path, model_dir, method):
    scene, _ = offgrid_scene(tmp_path, width=700, height=1300)
    merge_keys = {"method": method, "products": PRODUCTS, "formats": ["cog", "kea"]}
    grid = {"tile_size": 128, "stride": 64, "chunk_tiles": 3}
    exp = load_experiment(write_experiment(tmp_path, [scene], model_dir, grid=grid,
                                           merge=merge_keys))  # fmt: skip
    create_tiles(exp)
    predict(exp)
    merge(exp)
    whole = merged_bytes(exp)
    assert len(whole) == 2 + len(PRODUCTS) + 2  # prob, binary, products, two KEA

    banded = with_part_px(exp, 512)
    summary = merge(banded, force=True)
    assert summary["done"] == 1
    parts = manifest(exp, "merge_parts")
    with rasterio.open(RunPaths.of(exp).region_prob("all")) as f:
        height = f.height
    assert height > 1024  # three bands: 512, 512 and the rest
    assert sorted(parts) == ["all.part0000", "all.part0001", "all.part0002"]
    assert all(r["status"] == "done" for r in parts.values())
    assert merged_bytes(banded) == whole
    assert not (RunPaths.of(exp).merged / "parts").exists()  # removed once read

    again = merge(banded)  # nothing to redo: no band, and part_px changes no byte
    assert again["skipped"] == again["units"] == 1
    assert part_units(banded) == []


def test_bands_cover_the_region_in_order():
    box = PixelBox(100, 1024, 1700, 3000)
    cut = bands(box, 512)
    assert [b.height for b in cut] == [512, 512, 512, 440]
    assert cut[0].row0 == box.row0 and cut[-1].row1 == box.row1
    assert all(b.col0 == box.col0 and b.col1 == box.col1 for b in cut)
    assert all(a.row1 == b.row0 for a, b in zip(cut, cut[1:], strict=False))
    assert bands(box, 0) == [box] and bands(box, 2048) == [box]
    covered = np.zeros(box.height, int)
    for b in cut:
        covered[b.row0 - box.row0 : b.row1 - box.row0] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("part_px", [-512, 500, 1.5])
def test_part_px_must_be_a_multiple_of_the_block(tmp_path, model_dir, part_px):
    scene, _ = offgrid_scene(tmp_path)
    path = write_experiment(tmp_path, [scene], model_dir, merge={"part_px": part_px})
    with pytest.raises(ConfigError, match="merge.part_px"):
        load_experiment(path)

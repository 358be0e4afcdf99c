"""A small training store for the training tests: a scene with bright discs, their polygons."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import yaml

from conftest import lattice_transform, write_raster
from deepseg.config import load_experiment
from deepseg.stages.training_data import create_training_data

TINY = {"crop_size": 32, "batch_size": 3, "steps": 6, "validate_every": 2, "base_channels": 4,
        "depth": 2, "device": "cpu", "folds": 2, "fold_block_px": 128}  # fmt: skip


def scene_with_labels(folder: Path) -> tuple[Path, Path]:
    """A 320 x 320 px scene with bright discs (the labels) on a textured background; column
    ``kind`` of the labels: ``red`` discs are bright in band 1, ``green`` ones in band 2."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:320, 0:320]
    data = rng.integers(40, 90, (3, 320, 320)).astype(np.uint8)
    x0, y0 = lattice_transform(3200, 6400) @ (0, 0)
    discs, kinds = [], []
    for i, (c, r) in enumerate(rng.uniform(20, 300, (14, 2))):
        inside = np.hypot(cols + 0.5 - c, rows + 0.5 - r) < 9
        data[i % 2][inside] = 200
        discs.append(shapely.Point(x0 + 3 * c, y0 - 3 * r).buffer(27, quad_segs=32))
        kinds.append(("red", "green")[i % 2])
    scene = write_raster(folder / "scene.tif", data, lattice_transform(3200, 6400))
    labels = folder / "labels.gpkg"
    gpd.GeoDataFrame({"kind": kinds}, geometry=discs, crs="EPSG:3413").to_file(labels)
    return scene, labels


def store_experiment(folder: Path, **train):
    """The scene's experiment (tiny training settings, ``train`` overriding) and its store."""
    scene, labels = scene_with_labels(folder)
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mine", "output": {"path": str(folder / "out")},
        "input": {"rasters": [str(scene)]}, "model": {"dir": str(folder / "none")},
        "grid": {"tile_size": 64, "stride": 32, "chunk_tiles": 2},
        "train": {"rasters": [str(scene)], "labels": str(labels), **TINY, **train},
    }))  # fmt: skip
    exp = load_experiment(path, check_inputs=False)
    create_training_data(exp)
    return exp

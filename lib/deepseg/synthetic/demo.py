"""The bundled demo's data: a generated scene and its reference polygons.

``make_scene`` writes the seeded synthetic scene of ``scenes.render_scene`` as a 3 m RGB
uint8 GeoTIFF in EPSG:3413 (nodata 0) whose top-left corner lies on the global grid lattice
(origin (-4000100, 4100100) m, 3 m pixels), near x = -2,200,000 m, y = 100,000 m (Canadian
Arctic), and a GeoPackage with its slump footprints (layer ``reference``, column ``rts_id``)
and look-alikes (layer ``lookalikes``, column ``kind``: river_bar, road, gravel_pad).
The demo scene (``DEMO_SEED``, 3,072 x 2,560 px, 16 chunks of 1,024 px) holds slumps of the
real size distribution, two giants wider than 512 px and slumps across chunk borders.
The demo model in ``data/demo/model`` is committed; ``train.py`` makes it (see README.md).
Run ``deepseg demo-data [--force] [--root DIR]`` to make the scene files when absent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.profiles import DefaultGTiffProfile
from shapely.affinity import affine_transform

from ..config import TrainConfig
from ..storage.paths import atomic_path
from .scenes import Scene, render_scene
from .training_data import TRAIN_ROADS

log = logging.getLogger(__name__)

GRID_ORIGIN = (-4000100.0, 4100100.0)  # EPSG:3413 metres
RES_M = 3.0
SCENE_COL0, SCENE_ROW0 = 256 * 2344, 256 * 5208  # global grid pixel of the scene's top-left
CHUNK_PX = 1024  # demo chunk core (4 x 256 px strides); SCENE_COL0/ROW0 are multiples of it
NODATA_COLS = 40
DEMO_SEED = 7
DEMO_WIDTH, DEMO_HEIGHT = 3072, 2560
DEMO_GIANTS, DEMO_ROADS = 2, 2
SCENE_TAG = "DEEPSEG_DEMO_SCENE"  # GeoTIFF tag: what made the scene (see ``scene_version``)
GENERATOR_VERSION = 2  # raise whenever scenes.py or shapes.py change what a seed draws


def scene_version(width: int, height: int, seed: int, giants: int, roads: int) -> str:
    """What made a scene: a demo scene made otherwise is remade by ``ensure_demo``."""
    return (
        f"generator {GENERATOR_VERSION}, {width} x {height} px, seed {seed}, "
        f"{giants} giants, {roads} roads"
    )


def scene_transform() -> Affine:
    """EPSG:3413 affine (metres) of the scene: its pixel (0, 0) is grid pixel (SCENE_COL0, ROW0)."""
    x0 = GRID_ORIGIN[0] + SCENE_COL0 * RES_M
    y0 = GRID_ORIGIN[1] - SCENE_ROW0 * RES_M
    return Affine(RES_M, 0.0, x0, 0.0, -RES_M, y0)


def make_scene(
    path: Path,
    reference_path: Path,
    *,
    width: int = DEMO_WIDTH,
    height: int = DEMO_HEIGHT,
    seed: int = DEMO_SEED,
    giants: int = DEMO_GIANTS,
    roads: int = DEMO_ROADS,
) -> None:
    """Write the synthetic scene (``width`` x ``height`` px, 3 m, EPSG:3413, RGB uint8, nodata
    0) to ``path`` and its slump footprints and look-alikes (EPSG:3413 polygons) to
    ``reference_path`` (GeoPackage, layers ``reference`` and ``lookalikes``). Same seed, same
    pixels."""
    scene = render_scene(width, height, seed, giants=giants, roads=roads, nodata_cols=NODATA_COLS)
    transform = scene_transform()
    _write_reference(reference_path, scene, transform)  # first: the scene marks both complete
    profile = DefaultGTiffProfile(  # uint8, nodata 0, 256 px tiles, LZW
        width=width, height=height, count=3, crs="EPSG:3413", transform=transform
    )
    profile.update(interleave="pixel", photometric="RGB")
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(scene.pixels)
        dst.descriptions = ("red", "green", "blue")
        dst.update_tags(**{SCENE_TAG: scene_version(width, height, seed, giants, roads)})


def _write_reference(reference_path: Path, scene: Scene, transform: Affine) -> None:
    to_map = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    reference = gpd.GeoDataFrame(
        {"rts_id": np.arange(1, len(scene.slumps) + 1, dtype=np.int64)},
        geometry=[affine_transform(p, to_map) for p in scene.slumps],
        crs="EPSG:3413",
    )
    lookalikes = gpd.GeoDataFrame(
        {"kind": [kind for kind, _ in scene.lookalikes]},
        geometry=[affine_transform(p, to_map) for _, p in scene.lookalikes],
        crs="EPSG:3413",
    )
    with atomic_path(reference_path) as tmp:
        reference.to_file(tmp, layer="reference", driver="GPKG")
        lookalikes.to_file(tmp, layer="lookalikes", driver="GPKG")


def _current(scene: Path) -> bool:
    """Whether ``scene`` exists and was made by this version of the generator."""
    if not scene.exists():
        return False
    with rasterio.open(scene) as src:
        made_by = src.tags().get(SCENE_TAG)
    current = made_by == scene_version(DEMO_WIDTH, DEMO_HEIGHT, DEMO_SEED, DEMO_GIANTS, DEMO_ROADS)
    if not current:
        log.info("%s was made by another version of the demo generator: remaking it", scene)
    return current


TRAINING_ROW0 = SCENE_ROW0 + 10 * CHUNK_PX  # training scenes lie south of the demo scene
TRAINING_COLUMNS = 4  # training scenes per row, one 2-scene-wide cell each


def make_training_scenes(folder: Path, seeds: range, size: int) -> None:
    """The generated training scenes of ``train.py`` (``seeds``, ``size`` px, every other
    one with a giant, as ``training.train`` draws them) as lattice-aligned GeoTIFFs
    ``scene_{seed}.tif`` in cells 2 x ``size`` px apart south of the demo scene, and their
    slump footprints in ``labels.gpkg``: training data for create_training_data.py."""
    folder.mkdir(parents=True, exist_ok=True)
    slumps = []
    for i, seed in enumerate(seeds):
        scene = render_scene(size, size, seed, giants=i % 2, roads=TRAIN_ROADS)
        col = SCENE_COL0 + (i % TRAINING_COLUMNS) * 2 * size
        row = TRAINING_ROW0 + (i // TRAINING_COLUMNS) * 2 * size
        x0, y0 = GRID_ORIGIN[0] + col * RES_M, GRID_ORIGIN[1] - row * RES_M
        transform = Affine(RES_M, 0.0, x0, 0.0, -RES_M, y0)
        to_map = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
        slumps += [affine_transform(p, to_map) for p in scene.slumps]
        profile = DefaultGTiffProfile(
            width=size, height=size, count=3, crs="EPSG:3413", transform=transform
        )
        with (
            atomic_path(folder / f"scene_{seed}.tif") as tmp,
            rasterio.open(tmp, "w", **profile) as dst,
        ):
            dst.write(scene.pixels)
    labels = gpd.GeoDataFrame(geometry=slumps, crs="EPSG:3413")
    with atomic_path(folder / "labels.gpkg") as tmp:
        labels.to_file(tmp, layer="slumps", driver="GPKG")


def ensure_demo(repo_root: Path, force: bool = False, training: bool = False) -> None:
    """Make ``data/demo/scene.tif`` and ``reference.gpkg`` (seed ``DEMO_SEED``) under
    ``repo_root`` where absent or made by another generator version (always, with ``force``);
    with ``training``, also train.py's generated scenes as files in ``data/demo/training``."""
    demo = repo_root / "data" / "demo"
    if training and (force or not (demo / "training" / "labels.gpkg").exists()):
        t = TrainConfig()
        make_training_scenes(demo / "training", range(t.scene_seed, t.scene_seed + t.scenes),
                             t.scene_size)  # fmt: skip
        log.info("made the training scenes in %s", demo / "training")
    scene, reference = demo / "scene.tif", demo / "reference.gpkg"
    if force or not (_current(scene) and reference.exists()):
        start = time.perf_counter()
        make_scene(scene, reference)
        log.info("made %s and %s in %.1f s", scene, reference, time.perf_counter() - start)
    log.info("demo data ready in %s", demo)

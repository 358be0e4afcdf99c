"""A hand-made run for the evaluation tests: merged rasters and polygons written directly.

Rectangles on the pixel lattice, so every pixel count, IoU and area is known by hand.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from conftest import lattice_transform, write_experiment, write_raster
from deepseg.config import load_experiment
from deepseg.storage.paths import RunPaths

COL0, ROW0 = 600_000, 1_333_000  # grid pixel of the hand-made rasters' top-left corner
TRANSFORM = lattice_transform(COL0, ROW0)
WIDTH, HEIGHT, VALID_COLS = 600, 400, 550  # columns 550..599 are nodata
# (col0, row0, col1, row1) in pixels of the hand-made rasters; one pixel is 9 m²
PREDICTED = {
    "A": (10, 10, 30, 30),  # 400 px
    "B": (100, 50, 200, 150),  # 10,000 px
    "C": (300, 300, 320, 320),  # 400 px
    "D": (400, 20, 420, 40),  # 400 px, no reference: FP
    "H": (180, 250, 290, 345),  # 10,450 px = 94,050 m²: medium, but its reference is large
}
REFERENCE = [
    (10, 10, 30, 30),  # rA = A: IoU 1                                        3,600 m²
    (120, 50, 220, 150),  # rB: 8,000 px shared with B, IoU 8,000 / 12,000  90,000 m²
    (315, 300, 335, 320),  # rC: 100 px shared with C, IoU 100 / 700: FN    3,600 m²
    (440, 200, 545, 340),  # rE: 14,700 px, no prediction: FN              132,300 m²
    (180, 250, 290, 390),  # rH: 10,450 px shared with H, IoU 10,450 / 15,400  138,600 m²
    (560, 50, 590, 80),  # rF: on nodata, not evaluated
]
# pixels: valid 550 x 400 = 220,000; predicted 21,650; reference (valid) 40,900
TP_PX, FP_PX, FN_PX = 400 + 8_000 + 100 + 10_450, 21_650 - 18_950, 40_900 - 18_950
TN_PX = 220_000 - TP_PX - FP_PX - FN_PX


def px_box(col0: int, row0: int, col1: int, row1: int) -> shapely.Polygon:
    """The map (EPSG:3413) rectangle of pixels [col0, col1) x [row0, row1)."""
    x0, y0 = TRANSFORM @ (col0, row0)
    x1, y1 = TRANSFORM @ (col1, row1)
    return shapely.box(x0, y1, x1, y0)


def write_polygons(path: Path, boxes: list, crs: str | None = "EPSG:3413", **columns) -> Path:
    frame = gpd.GeoDataFrame(columns, geometry=[px_box(*b) for b in boxes], crs="EPSG:3413")
    if crs != "EPSG:3413":
        frame = frame.to_crs(crs) if crs else frame.set_crs(None, allow_override=True)
    with warnings.catch_warnings():  # a reference without CRS is written on purpose
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        frame.to_file(path)
    return path


def hand_run(tmp_path: Path, model_dir: Path, prob: np.ndarray | None = None, **sections) -> Path:
    """An experiment whose merged rasters and polygons are written by hand: probability 0.9
    on PREDICTED (binary 1), 0.1 elsewhere, nodata right of VALID_COLS."""
    scene = write_raster(
        tmp_path / "scene.tif", np.ones((3, 8, 8), np.uint8), lattice_transform(COL0, ROW0)
    )
    exp_path = write_experiment(tmp_path, [scene], model_dir, **sections)
    paths = RunPaths.of(load_experiment(exp_path))
    if prob is None:
        prob = np.full((HEIGHT, WIDTH), 0.1, np.float32)
        for c0, r0, c1, r1 in PREDICTED.values():
            prob[r0:r1, c0:c1] = 0.9
    prob = prob.copy()
    prob[:, VALID_COLS:] = -1
    binary = np.where(prob >= 0.5, 1, 0).astype(np.uint8)
    binary[prob == -1] = 255
    paths.merged.mkdir(parents=True)
    write_raster(paths.region_prob("all"), prob[None], TRANSFORM, nodata=-1)
    write_raster(paths.region_binary("all"), binary[None], TRANSFORM, nodata=255)
    paths.vectors.mkdir()
    write_polygons(paths.polygons, list(PREDICTED.values()), rts_id=list(PREDICTED))
    write_polygons(tmp_path / "reference.gpkg", REFERENCE)
    return exp_path


def counts(section: dict) -> tuple[int, ...]:
    return tuple(section[k] for k in ("tp_px", "fp_px", "fn_px", "tn_px"))

"""Rasters several test modules share, each on the test grid lattice (see conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import lattice_transform, write_raster
from deepseg.geo.grid import PixelBox

CORNER_AT = (3 * 64 + 10, 5 * 64 + 20)  # grid (col, row) of the raster's pixel (0, 0)
CORNER_SHAPE = (200, 260)  # rows, cols
CORNER = (60, 70)  # rows, cols of nodata at the raster's top-left
OFFGRID_AT = (1287, 1613)  # grid (col, row) of the test raster's pixel (0, 0): not chunk-aligned


def corner_scene(folder: Path) -> Path:
    """A 200 x 260 px raster (values 1-254, so the pointwise model finds objects) with a
    nodata top-left corner; test grid: 64 px tiles, stride 32, chunks of 2 x 2 tiles."""
    data = np.random.default_rng(5).integers(1, 255, size=(3, *CORNER_SHAPE), dtype=np.uint8)
    data[:, : CORNER[0], : CORNER[1]] = 0
    return write_raster(folder / "scene.tif", data, lattice_transform(*CORNER_AT))


def corner_valid_mask() -> tuple[PixelBox, np.ndarray]:
    """The raster's grid box and its valid pixels, from its definition above."""
    valid = np.ones(CORNER_SHAPE, dtype=bool)
    valid[: CORNER[0], : CORNER[1]] = False
    return PixelBox(
        CORNER_AT[0], CORNER_AT[1], CORNER_AT[0] + CORNER_SHAPE[1], CORNER_AT[1] + CORNER_SHAPE[0]
    ), valid


def offgrid_scene(folder: Path, width: int = 301, height: int = 257) -> tuple[Path, np.ndarray]:
    """A random uint8 RGB raster on the grid lattice with nodata 0 in a corner and a line."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 256, size=(3, height, width), dtype=np.uint8)
    data[:, :40, :60] = 0
    data[:, 100, 50:150] = 0
    data[0, 150, 10:20] = 0  # one band at nodata is still a valid pixel
    return write_raster(folder / "scene.tif", data, lattice_transform(*OFFGRID_AT)), data

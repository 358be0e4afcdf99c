"""The ``preview`` product of ``merge``: one colour PNG per region, a few thousand px across.

A preview pixel covers ``factor`` x ``factor`` grid pixels. It shows the highest fused
probability among them (max-pooled while merge streams its windows, so a slump far smaller
than a preview pixel still shows, and memory is the preview's size whatever the region's),
the outline of the cells that reached the threshold, and, where the input rasters can be read,
the imagery underneath (warped onto the preview's pixels with average resampling). A legend
says what the colours and the outline mean and what one preview pixel is on the ground.

A K-class run's preview shows its class map instead, in the classes' colours over the
imagery, read from the class COG's nearest-neighbour overviews (so its memory is the
preview's too), with one legend entry per class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from rasterio.crs import CRS
from rasterio.enums import Resampling

from ..config import Experiment
from ..core.errors import DeepSegError
from ..geo.grid import PixelBox, TileGrid
from ..geo.readers import WarpTarget, open_reader
from ..geo.sources import open_inputs
from ..model.classes import ClassTable
from ..storage.paths import atomic_path
from ..stores.layout import PROB_NODATA

log = logging.getLogger(__name__)
PREVIEW_PX = 2048  # the longer side of a preview, preview pixels
SHOWN_FROM = 0.1  # probabilities below this are left transparent over the imagery
DPI = 100
OUTLINE = "#00e5ff"  # the threshold outline (cyan: stands out from the colour map and tundra)
STRETCH_PERCENTILES = (2, 98)  # imagery contrast stretch, per band


@dataclass(frozen=True)
class PreviewGrid:
    """The preview's pixels: ``factor`` grid pixels per side each, from ``box``'s corner."""

    box: PixelBox
    factor: int
    width: int
    height: int

    @classmethod
    def of(cls, box: PixelBox, longest: int = PREVIEW_PX) -> PreviewGrid:
        factor = max(1, math.ceil(max(box.width, box.height) / longest))
        return cls(box, factor, -(-box.width // factor), -(-box.height // factor))

    def transform(self, grid: TileGrid) -> Affine:
        """Preview pixel -> ``crs`` coordinates."""
        return grid.transform(self.box) @ Affine.scale(self.factor)


class PeakProbability:
    """The highest probability per preview pixel, fed window by window (nodata -1 loses)."""

    def __init__(self, grid: PreviewGrid) -> None:
        self.grid = grid
        self.peak = np.full((grid.height, grid.width), PROB_NODATA, np.float32)

    def add(self, window: PixelBox, prob: np.ndarray) -> None:
        """Pool ``prob`` (grid pixels of ``window``, inside the region) into the preview."""
        f, box = self.grid.factor, self.grid.box
        r0, c0 = window.row0 - box.row0, window.col0 - box.col0
        cr0, cc0 = r0 // f, c0 // f
        cr1, cc1 = -(-(r0 + window.height) // f), -(-(c0 + window.width) // f)
        padded = np.full(((cr1 - cr0) * f, (cc1 - cc0) * f), PROB_NODATA, np.float32)
        top, left = r0 - cr0 * f, c0 - cc0 * f
        padded[top : top + window.height, left : left + window.width] = prob
        pooled = padded.reshape(cr1 - cr0, f, cc1 - cc0, f).max(axis=(1, 3))
        cells = self.peak[cr0:cr1, cc0:cc1]
        np.maximum(cells, pooled, out=cells)


def imagery(exp: Experiment, grid: TileGrid, preview: PreviewGrid) -> np.ndarray | None:
    """The input rasters on the preview's pixels as (h, w, 3) RGB in [0, 1], contrast
    stretched, white where no input reaches; None when no input can be read there."""
    warped = warped_imagery(exp, grid, preview)
    return None if warped is None else _stretch(*warped)


def warped_imagery(
    exp: Experiment, grid: TileGrid, preview: PreviewGrid
) -> tuple[np.ndarray, np.ndarray] | None:
    """(3, h, w) input values averaged onto the preview's pixels (the first three of
    ``input.bands``, or the first one thrice) and the (h, w) mask of pixels an input reached."""
    try:
        inputs = open_inputs(exp, grid)
    except DeepSegError as exc:
        log.warning("preview without imagery: %s", exc)
        return None
    bands = list(exp.input.bands[:3])
    bands = bands if len(bands) == 3 else bands[:1] * 3
    out = np.zeros((3, preview.height, preview.width), np.float64)
    filled = np.zeros((preview.height, preview.width), bool)
    crs, transform = CRS.from_user_input(exp.crs), preview.transform(grid)
    for raster in inputs:
        if raster.box.intersection(preview.box) is None:
            continue
        scale = (raster.warp_scale[0] / preview.factor, raster.warp_scale[1] / preview.factor)
        target = WarpTarget(
            crs, transform, preview.width, preview.height, "average", raster.nodata, scale
        )
        with open_reader(raster.path) as src:
            data, reached = src.warp(bands, target)
        new = reached & ~filled  # the first input listed wins where inputs overlap
        out[:, new] = data[:, new]
        filled |= new
    return (out, filled) if filled.any() else None


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band percentile stretch to [0, 1]; invalid pixels white."""
    out = np.ones(rgb.shape[1:] + (3,))
    for b in range(3):
        lo, hi = np.percentile(rgb[b][valid], STRETCH_PERCENTILES)
        out[..., b][valid] = np.clip((rgb[b][valid] - lo) / max(hi - lo, 1e-9), 0, 1)
    return out


def _map_figure(h: int, w: int, background: np.ndarray | None) -> tuple[Figure, Any]:
    """A figure with an h x w px map axes (the imagery drawn in it, when given) and room for
    a legend on the right and the title above."""
    fig = Figure(figsize=((w + 260) / DPI, (h + 110) / DPI), dpi=DPI)
    ax = fig.add_axes((20 / (w + 260), 60 / (h + 110), w / (w + 260), h / (h + 110)))
    ax.set_axis_off()
    if background is not None:
        ax.imshow(background, interpolation="nearest")
    return fig, ax


def _save(fig: Figure, path: Path, title: str, cell_m: float) -> None:
    """Title the preview with what one of its pixels is on the ground; write it atomically."""
    fig.suptitle(f"{title}\none preview pixel = {cell_m:g} m x {cell_m:g} m", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def render(
    path: Path,
    peak: np.ndarray,
    background: np.ndarray | None,
    threshold: float,
    title: str,
    cell_m: float,
) -> None:
    """Draw the preview with its legend into ``path`` (PNG), atomically."""
    h, w = peak.shape
    fig, ax = _map_figure(h, w, background)
    if background is None:
        nodata = np.where(peak == PROB_NODATA, 1.0, np.nan)
        ax.imshow(nodata, cmap=ListedColormap(["#d9d9d9"]), interpolation="nearest")
    shown = np.ma.masked_less(peak, SHOWN_FROM)
    image = ax.imshow(shown, cmap="magma", vmin=0, vmax=1, interpolation="nearest", alpha=0.8)
    if (peak >= threshold).any() and (peak < threshold).any():
        ax.contour(
            peak >= threshold, levels=[0.5], colors=OUTLINE, linewidths=1.5, antialiased=False
        )
    bar = fig.add_axes(((w + 40) / (w + 260), 60 / (h + 110), 18 / (w + 260), h / (h + 110)))
    fig.colorbar(image, cax=bar).set_label("highest probability in the pixel", fontsize=8)
    outline = Line2D([], [], color=OUTLINE, label=f"probability >= {threshold:.3f} (binary)")
    fig.legend(handles=[outline], loc="lower left", frameon=False)
    _save(fig, path, title, cell_m)


def class_preview(cog: Path, preview: PreviewGrid) -> np.ndarray:
    """The class map of ``cog`` on the preview's pixels (nearest; 255 nodata), from the COG's
    overviews."""
    with rasterio.open(cog) as src:
        return src.read(1, out_shape=(preview.height, preview.width), resampling=Resampling.nearest)


def render_classes(
    path: Path,
    classes: np.ndarray,
    table: ClassTable,
    background: np.ndarray | None,
    title: str,
    cell_m: float,
) -> None:
    """Draw a class preview (uint8 class indices, 255 nodata) with its legend, atomically."""
    h, w = classes.shape
    fig, ax = _map_figure(h, w, background)
    rgba = np.zeros((256, 4))
    rgba[: len(table)] = [(*(c / 255 for c in colour), 0.8) for colour in table.colours]
    if background is None:
        rgba[255] = (0.85, 0.85, 0.85, 1.0)  # nodata grey where no imagery shows through
    ax.imshow(rgba[classes], interpolation="nearest")
    patches = [Patch(color=rgba[i][:3], label=n) for i, n in enumerate(table.names)]
    right = ((w + 30) / (w + 260), 0.5)  # in the margin right of the map, like the colour bar
    fig.legend(handles=patches, loc="center left", bbox_to_anchor=right, frameon=False, fontsize=8)
    _save(fig, path, title, cell_m)

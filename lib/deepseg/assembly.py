"""The probability stores of a run read as one map: their index, the regions, ``assemble``.

Neighbouring stores overlap by ``tile_size - stride`` (a chunk's footprint is its core plus
the overhang of its last tiles); ``assemble`` combines them with the rule used inside a chunk,
the maximum, so the fused map does not depend on ``grid.chunk_tiles``. Boxes are in global
grid pixels (see ``grid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Experiment
from .errors import DeepSegError
from .grid import PixelBox, TileGrid
from .manifest import fold
from .outputs import RunPaths
from .stores import PROB_NODATA, read_prob_attrs, read_prob_window

DEFAULT_REGION = "all"


@dataclass(frozen=True)
class StoreIndex:
    """The probability stores of a run, by chunk, with what they recorded."""

    paths: dict[tuple[int, int], Path]
    valid_boxes: dict[tuple[int, int], PixelBox]  # grid pixels holding a probability
    threshold: float  # the threshold recorded at predict time
    scales: tuple[float, ...]

    @classmethod
    def of_run(cls, paths: RunPaths) -> StoreIndex:
        """Index the finished stores from predict's manifest (opening only stores it lacks)."""
        states = fold(paths, "predict")
        found, boxes, thresholds, scales = {}, {}, set(), set()
        for path in paths.prob_stores():
            state = states.get(path.stem)
            known = state is not None and state.status == "done" and "valid_box" in state.info
            info = state.info if known else read_prob_attrs(path)
            chunk = TileGrid.parse_chunk_id(path.stem)
            found[chunk] = path
            boxes[chunk] = PixelBox(*info["valid_box"])
            thresholds.add(float(info["threshold"]))
            scales.add(tuple(float(s) for s in info["scales"]))
        if not found:
            raise DeepSegError(f"{paths.predictions}: no probability stores; run predict.py first")
        if len(thresholds) > 1 or len(scales) > 1:
            raise DeepSegError(
                f"{paths.predictions}: stores were predicted with different thresholds "
                f"{sorted(thresholds)} or scales {sorted(scales)}; rerun predict.py --force"
            )
        return cls(found, boxes, thresholds.pop(), scales.pop())

    def extent(self) -> PixelBox:
        """The smallest box holding every predicted pixel."""
        boxes = [b for b in self.valid_boxes.values() if b.width > 0]
        if not boxes:
            raise DeepSegError("no valid predicted pixel in any probability store")
        total = boxes[0]
        for box in boxes[1:]:
            total = total.union(box)
        return total


def regions(exp: Experiment, grid: TileGrid, index: StoreIndex) -> dict[str, PixelBox]:
    """Region name -> grid-pixel box: ``regions:`` bboxes, else one region over all predictions."""
    if exp.regions:
        return {name: grid.box_of_bounds(bbox) for name, bbox in sorted(exp.regions.items())}
    return {DEFAULT_REGION: index.extent()}


def assemble(grid: TileGrid, index: StoreIndex, window: PixelBox) -> tuple[np.ndarray, np.ndarray]:
    """Fused probability (nodata -1) and scale bits over ``window`` from the stores reaching it."""
    prob = np.full((window.height, window.width), PROB_NODATA, dtype=np.float32)
    hits = np.zeros((window.height, window.width), dtype=np.uint8)
    ccols, crows = grid.chunks_touching(window)
    for chunk in ((c, r) for r in crows for c in ccols):
        path = index.paths.get(chunk)
        part = read_prob_window(path, window) if path is not None else None
        if part is not None:
            np.maximum(prob, part[0], out=prob)
            hits |= part[1]
    return prob, hits

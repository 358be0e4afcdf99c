"""The probability stores of a run read as one map: their index, the regions, ``assemble``.

Neighbouring stores overlap by ``tile_size - stride`` (a chunk's footprint is its core plus
the overhang of its last tiles); ``assemble`` combines them with the rule used inside a chunk:
the maximum, or for ``sinusoidal`` stores the mean weighted by each store's window-weight sum
(sum of w p over sum of w, as one chunk would have it), so the fused map does not depend on
``grid.chunk_tiles``. Boxes are in global grid pixels (see ``grid``). K-class stores fuse by
the same rules per probability vector (``model.overlap``): the weighted mean per class, or
the vector of the store whose top class is most confident (the first, in raster order, on
ties).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Experiment
from ..core.errors import DeepSegError
from ..geo.grid import PixelBox, TileGrid
from ..run.manifest import fold, unit_names
from ..run.stage import is_stale, made_from
from ..storage.paths import RunPaths
from ..stores.layout import PROB_NODATA, holds_probability
from ..stores.prob_store import ProbWindow, read_prob_attrs, read_prob_window
from .predict import STAGE as PREDICT

DEFAULT_REGION = "all"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreIndex:
    """The probability stores of a run, by chunk, with what they recorded."""

    paths: dict[tuple[int, int], Path]
    valid_boxes: dict[tuple[int, int], PixelBox]  # grid pixels holding a probability
    threshold: float  # the threshold recorded at predict time
    scales: tuple[float, ...]
    merge_method: str = "max"
    classes: tuple[str, ...] = ()  # K-class stores: the class names; () binary

    @classmethod
    def local(cls, paths: RunPaths) -> StoreIndex:
        """The index, with a local copy of every store to read (downloaded in a gs:// run)."""
        paths.local_folder(paths.predictions, ".kea")
        return cls.of_run(paths)

    @classmethod
    def of_run(cls, paths: RunPaths) -> StoreIndex:
        """Index the finished stores from predict's manifest (opening only stores it lacks)."""
        states = fold(paths, "predict")
        found, boxes, thresholds, scales, methods, classes = {}, {}, set(), set(), set(), set()
        for path in paths.prob_stores():
            state = states.get(path.stem)
            known = state is not None and state.status == "done" and "valid_box" in state.info
            info = state.info if known else read_prob_attrs(paths.local(path))
            chunk = TileGrid.parse_chunk_id(path.stem)
            found[chunk] = path
            boxes[chunk] = PixelBox(*info["valid_box"])
            thresholds.add(float(info["threshold"]))
            scales.add(tuple(float(s) for s in info["scales"]))
            methods.add(info.get("merge_method", "max"))
            classes.add(tuple(info.get("classes", ())))
        if not found and any(s.status == "done" for s in states.values()):
            raise DeepSegError(
                f"{paths.predictions}: no probability stores: predict found no tile with valid "
                "data (inputs all nodata, or a grid.tile_list that misses them); nothing to merge"
            )
        if not found:
            raise DeepSegError(f"{paths.predictions}: no probability stores; run predict.py first")
        found_kinds = {"thresholds": thresholds, "scales": scales, "merge methods": methods,
                       "classes": classes}  # fmt: skip
        differ = [f"{k} {sorted(v)}" for k, v in found_kinds.items() if len(v) > 1]
        if differ:
            raise DeepSegError(
                f"{paths.predictions}: stores were predicted with different "
                f"{'; '.join(differ)}; rerun predict.py --force"
            )
        return cls(found, boxes, thresholds.pop(), scales.pop(), methods.pop(), classes.pop())

    def paths_touching(self, grid: TileGrid, window: PixelBox) -> list[Path]:
        """The stores of the chunks whose footprint may reach ``window``, in raster order."""
        ccols, crows = grid.chunks_touching(window)
        chunks = ((c, r) for r in crows for c in ccols)
        return [self.paths[chunk] for chunk in chunks if chunk in self.paths]

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


class Fusion:
    """Stores' values fused over one window (grid px): their maximum, or for ``sinusoidal``
    stores their mean weighted by each one's window-weight sum (float64 sums); ``classes``
    K > 0: K-class stores, by the rules in the module docstring."""

    def __init__(self, window: PixelBox, merge_method: str, classes: int = 0) -> None:
        shape = (window.height, window.width)
        planes = (classes, *shape) if classes else shape
        self.window = window
        self.prob = np.full(planes, PROB_NODATA, dtype=np.float32)
        self.hits = np.zeros(shape, dtype=np.uint8)
        self.num = np.zeros(planes, dtype=np.float64) if merge_method == "sinusoidal" else None
        self.den = np.zeros(shape, dtype=np.float64) if self.num is not None else None

    def add(self, part: ProbWindow) -> None:
        """Fold in one store's values over ``part.box`` (inside the window)."""
        at = part.box.slices_in(self.window)
        self.hits[at] |= part.hits
        if self.num is None:
            self._keep_max(at, part.prob)
            return
        valid = holds_probability(part.prob)
        w = part.weight if part.weight is not None else valid * np.float32(1)
        self.num[(..., *at)] += w * np.where(valid, part.prob, 0.0)
        self.den[at] += w

    def _keep_max(self, at: tuple[slice, slice], prob: np.ndarray) -> None:
        """The maximum; for K classes the vector whose top class is most probable."""
        if prob.ndim == 2:
            np.maximum(self.prob[at], prob, out=self.prob[at])
            return
        old = self.prob[(..., *at)]
        np.copyto(old, prob, where=prob.max(axis=0) > old.max(axis=0))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Fused probability (float32, nodata -1; K-class (K, h, w)) and OR-ed scale bits."""
        if self.num is None:
            return self.prob, self.hits
        np.divide(self.num, self.den, out=self.num, where=self.den > 0)
        return np.where(self.den > 0, self.num, PROB_NODATA).astype(np.float32), self.hits


def assemble(grid: TileGrid, index: StoreIndex, window: PixelBox) -> tuple[np.ndarray, np.ndarray]:
    """Fused probability (nodata -1; K-class (K, h, w)) and scale bits over ``window`` from the
    stores reaching it."""
    fusion = Fusion(window, index.merge_method, len(index.classes))
    for path in index.paths_touching(grid, window):
        part = read_prob_window(path, window)
        if part is not None:
            fusion.add(part)
    return fusion.result()


def check_predicted(exp: Experiment) -> None:
    """Refuse to merge or vectorize while predict has not run (or is still running) a chunk
    create_tiles staged tiles for: the outputs would have holes there. Chunks whose predict
    failed are left out with a warning (a few bad chunks must not hold up a continent); their
    area stays nodata until they are redone, which remakes the outputs."""
    paths = RunPaths.of(exp)
    predicted = fold(paths, "predict")
    staged = fold(paths, "create_tiles")
    with_tiles = sorted(u for u, s in staged.items() if s.status == "done" and s.outputs)
    status = {u: getattr(predicted.get(u), "status", None) for u in with_tiles}
    missing = [u for u in with_tiles if status[u] not in ("done", "failed")]
    failed = [u for u in with_tiles if status[u] == "failed"]
    check = f"deepseg check -e {exp.name} lists them"
    if missing:
        raise DeepSegError(
            f"predict has not finished {len(missing)} chunk(s) with staged tiles "
            f"({unit_names(missing)}); run predict.py -e {exp.name} until it reports none "
            f"pending ({check})"
        )
    stale = _stale_predictions(exp, predicted, with_tiles)
    if stale:
        raise DeepSegError(
            f"the stores of {len(stale)} chunk(s) ({unit_names(stale)}) were predicted with "
            "another model or other settings than the experiment has now (model.dir, "
            f"inference.*, merge.method): run predict.py -e {exp.name} until it reports none "
            "pending, so the map is not made of two predictions"
        )
    if failed:
        log.warning(
            "predict failed on %d chunk(s) (%s): their area stays nodata; %s",
            len(failed),
            unit_names(failed),
            check,
        )


def _stale_predictions(exp: Experiment, predicted: dict, units: list[str]) -> list[str]:
    """The done chunks of ``units`` whose predict ``made_from`` is not today's (none when
    today's cannot be computed here, e.g. the model folder is not on this machine)."""
    try:
        current = made_from(PREDICT, exp)
    except (DeepSegError, OSError) as exc:
        log.warning("cannot tell whether the stores are of today's model and settings: %s", exc)
        return []
    done = [u for u in units if getattr(predicted.get(u), "status", None) == "done"]
    return [u for u in done if is_stale(predicted[u], current(u))]

"""Stage ``predict``: tile stores in, one probability store per chunk out.

Units are the chunks of create_tiles (chunks with a tile over an input, and a listed tile
when ``grid.tile_list`` or ``--tile-list`` is set). Every tile is predicted exactly once per
run (it belongs to one chunk); with a tile list only the listed tiles of a store are predicted.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .config import Experiment, resolve_threshold
from .errors import DeepSegError
from .grid import TileGrid
from .inference import predict_chunk
from .manifest import fold
from .model import WEIGHTS, load_model, read_model_card
from .outputs import RunPaths
from .runlog import update_run_log
from .runner import Stage, UnitResult, run
from .stores import TileStore, read_prob_attrs, read_tile_store, write_prob_store
from .tiling import read_tile_list, tiling_units

log = logging.getLogger(__name__)


def predict_units(exp: Experiment) -> list[str]:
    """The chunks create_tiles works on (so ``--shard I/N`` picks the same chunks in both
    stages); a chunk it found without tiles is done at once, with no store."""
    paths = RunPaths.of(exp)
    if not paths.tile_stores() and not fold(paths, "create_tiles"):
        raise DeepSegError(f"{paths.tiles}: no tile stores; run create_tiles.py first")
    return tiling_units(exp)


def _check(exp: Experiment) -> None:
    """Refuse a model folder or setting that cannot work, before anything is written."""
    if exp.merge.method != "max":
        raise DeepSegError(f"merge.method: {exp.merge.method!r} is not implemented yet; use max")
    read_model_card(exp.model.dir, len(exp.input.bands))


def _prepare(exp: Experiment) -> None:
    """Record in the run log which model, statistics and settings this run uses."""
    card = read_model_card(exp.model.dir, len(exp.input.bands))
    update_run_log(
        RunPaths.of(exp),
        model_checkpoint=str(exp.model.dir / WEIGHTS),
        model_version=str(card.config.get("model_version", "unknown")),
        normalization_stats_hash=card.stats_md5,
        threshold=resolve_threshold(exp, card.threshold),
        scales_used=list(exp.inference.scales),
        tta_config=exp.inference.tta,
    )


def only_listed(store: TileStore, listed: set[tuple[int, int]]) -> TileStore:
    """The store with its tile table cut to the listed tiles."""
    keep = np.array(
        [(c, r) in listed for c, r in zip(store.tiles.col, store.tiles.row, strict=True)],
        dtype=bool,
    )
    table = {f.name: getattr(store.tiles, f.name)[keep] for f in dataclasses.fields(store.tiles)}
    return dataclasses.replace(store, tiles=type(store.tiles)(**table))


class PredictWorker:
    """Predicts chunks of one experiment: the model is loaded once per process."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.paths = RunPaths.of(exp)
        self.model = load_model(exp.model.dir, len(exp.input.bands), exp.inference.device)
        self.threshold = resolve_threshold(exp, self.model.threshold)
        self.listed = read_tile_list(exp.grid.tile_list, self.grid) if exp.grid.tile_list else None
        self.staged = fold(self.paths, "create_tiles")

    def run(self, unit: str) -> UnitResult:
        """Predict one chunk's tiles into its probability store."""
        source = self.paths.tile_store(unit)
        if not source.exists():
            state = self.staged.get(unit)
            if state is not None and state.status == "done" and not state.outputs:
                return UnitResult([], {"tiles": 0})  # staged and found without valid data
            raise DeepSegError(f"{source}: missing; run create_tiles.py for this chunk first")
        store = read_tile_store(source)
        if self.listed is not None:
            store = only_listed(store, self.listed)
        prob, hits, detected = predict_chunk(store, self.model, self.exp, self.grid, self.threshold)
        target = self.paths.prob_store(unit)
        footprint = self.grid.chunk_footprint(*store.chunk)
        write_prob_store(
            target,
            self.grid,
            self.exp.crs,
            store.chunk,
            footprint,
            prob,
            hits,
            self.threshold,
            self.exp.inference.scales,
        )
        counts = {"tiles": len(store.tiles), "tiles_with_detection": detected}
        attrs = read_prob_attrs(target)  # read back: what merge and vectorize index stores by
        info = {k: attrs[k] for k in ("valid_box", "threshold", "scales")}
        return UnitResult([target], counts, info)


STAGE = Stage(
    name="predict",
    units=predict_units,
    expected=lambda exp, unit: [RunPaths.of(exp).prob_store(unit)],
    worker=PredictWorker,
    check=_check,
    prepare=_prepare,
    uses_gpu=True,
)


def predict(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Predict every chunk (see ``runner.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

"""Stage ``predict``: tile stores in, one probability store per chunk out.

Units are the chunks of create_tiles (chunks with a tile over an input, and a listed tile
when ``grid.tile_list`` or ``--tile-list`` is set). Every tile is predicted exactly once per
run (it belongs to one chunk); with a tile list only the listed tiles of a store are predicted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import torch

from ..config import Experiment
from ..core.errors import DeepSegError
from ..geo.grid import TileGrid
from ..geo.tile_list import TileList, listed_tiles
from ..model.card import WEIGHTS, read_model_card
from ..model.folder import local_model_dir, model_hashes
from ..model.inference import BatchSize, predict_chunk
from ..model.loading import load_model
from ..model.threshold import merge_threshold, threshold_identity
from ..run.driver import run
from ..run.manifest import digest, done_runs, fold
from ..run.runlog import update_run_log
from ..run.stage import Event, Stage, UnitResult
from ..storage.paths import PROB_STORE, RunPaths, publish
from ..stores.chunk_io import ChunkIO, auto_workers
from ..stores.layout import StorePlace, check_on_grid
from ..stores.prob_store import ProbStore
from ..stores.tile_store import TileStore
from .layers import classes_record
from .tiles import check_model_and_grid, tiling_units

log = logging.getLogger(__name__)


def predict_units(exp: Experiment) -> list[str]:
    """The chunks create_tiles works on (so ``--shard I/N`` picks the same chunks in both
    stages); a chunk it found without tiles is done at once, with no store."""
    paths = RunPaths.of(exp)
    if not paths.tile_stores() and not fold(paths, "create_tiles"):
        raise DeepSegError(f"{paths.tiles}: no tile stores; run create_tiles.py first")
    return tiling_units(exp)


def device_name(device: torch.device) -> str:
    """What the run log's ``gpu_type`` records: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _prepare(exp: Experiment) -> None:
    """Record in the run log which model, statistics and settings this run uses."""
    model_dir = local_model_dir(exp)
    card = read_model_card(model_dir, len(exp.input.bands), exp.model.expected_data_version)
    update_run_log(
        RunPaths.of(exp),
        model_checkpoint=str(exp.model.dir / WEIGHTS),
        model_files=model_hashes(model_dir),
        model_version=str(card.config.get("model_version", "unknown")),
        model_data_version=card.data_version,
        normalization_stats_hash=card.stats_md5,
        threshold=merge_threshold(exp, card.threshold),
        scales_used=list(exp.inference.scales),
        tta_config=exp.inference.tta,
        classes=classes_record(card.class_table),
    )


def only_listed(store: TileStore, listed: TileList) -> TileStore:
    """The store with its tile table cut to the listed tiles."""
    keep = listed.contains(store.tiles.col, store.tiles.row)
    table = {f.name: getattr(store.tiles, f.name)[keep] for f in dataclasses.fields(store.tiles)}
    return dataclasses.replace(store, tiles=type(store.tiles)(**table))


class PredictWorker:
    """Predicts chunks of one experiment: the model is loaded once per process, tile stores
    are read ahead and probability stores written behind it (``chunk_io``)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.grid = TileGrid.from_experiment(exp)
        self.paths = RunPaths.of(exp)
        model_dir = local_model_dir(exp)
        self.model = load_model(
            model_dir,
            len(exp.input.bands),
            exp.inference.device,
            expected_data_version=exp.model.expected_data_version,
            tile_size=exp.grid.tile_size,
        )
        if self.model.device.type == "cuda":  # convolutions run fastest channels-last there
            self.model.network = self.model.network.to(memory_format=torch.channels_last)
        if exp.inference.compile:
            self.model.network = torch.compile(self.model.network)
        self.threshold = merge_threshold(exp, self.model.threshold)
        table = self.model.card.class_table  # a K-class model's stores name their classes
        self.classes, self.colours = (table.names, table.colours) if table else ((), ())
        self.listed = listed_tiles(exp, self.grid)
        self.staged = fold(self.paths, "create_tiles")
        self.batch_size = BatchSize(exp.inference.batch_size)
        self.device_name = device_name(self.model.device)
        workers = exp.inference.io_workers
        self.io_workers = auto_workers(self.model.device.type) if workers is None else workers

    def run_all(self, units: Sequence[str]) -> Iterator[Event]:
        """Events for ``units`` (see ``run.stage.events``), reading ahead and writing behind."""
        with ChunkIO(self.io_workers) as io:
            pending = iter(units)
            reads: deque[tuple[str, Future | None]] = deque()
            writes: deque[tuple[str, Future, dict[str, int]]] = deque()
            while True:
                while len(reads) < io.depth and (unit := next(pending, None)) is not None:
                    source = self.paths.tile_store(unit)
                    staged = self.paths.done(source)
                    reads.append((unit, io.read(source, self.paths.local) if staged else None))
                if not reads:
                    break
                unit, future = reads.popleft()
                yield "start", unit, None
                try:
                    if future is None:
                        yield "done", unit, self._without_store(unit)
                        continue
                    writes.append((unit, *self._predict(unit, future.result(), io)))
                except Exception as exc:  # noqa: BLE001 - reported as the unit's failure
                    yield "failed", unit, exc
                while writes and (writes[0][1].done() or len(writes) > io.depth):
                    yield self._written(*writes.popleft())
            while writes:
                yield self._written(*writes.popleft())

    def _without_store(self, unit: str) -> UnitResult:
        state = self.staged.get(unit)
        if state is not None and state.status == "done" and not state.outputs:
            return UnitResult([], {"tiles": 0})  # staged and found without valid data
        raise DeepSegError(
            f"{self.paths.tile_store(unit)}: missing; run create_tiles.py for this chunk first"
        )

    def _predict(self, unit: str, store: TileStore, io: ChunkIO) -> tuple[Future, dict]:
        """Predict a chunk; its store is written in the background."""
        source = self.paths.tile_store(unit)
        box = self.grid.chunk_store_box(*store.chunk)
        check_on_grid(source, store.place, self.grid, self.exp.crs, box)
        if self.listed is not None:
            store = only_listed(store, self.listed)
        pred = predict_chunk(
            store, self.model, self.exp, self.grid, self.threshold, self.batch_size
        )
        if pred.out_of_range:
            log.error(
                "chunk %s: %d predicted value(s) outside [0, 1] or NaN, clipped; check the model",
                unit,
                pred.out_of_range,
            )
        footprint = self.grid.chunk_footprint(*store.chunk)
        place = StorePlace.on_grid(self.grid, self.exp.crs, store.chunk, footprint)
        future = io.write(
            self.paths.prob_store(unit),
            ProbStore(
                place,
                pred.prob,
                pred.hits,
                pred.weight,
                self.threshold,
                self.exp.inference.scales,
                store.tiles.tile_id,
                self.classes,
                self.colours,
            ),
        )
        counts = {
            "chunks_written": 1,
            "tiles": len(store.tiles),
            "tiles_with_detection": pred.tiles_with_detection,
            "values_clipped": pred.out_of_range,
        }
        return future, counts

    def _written(self, unit: str, future: Future, counts: dict[str, int]) -> Event:
        try:
            info = future.result()
        except Exception as exc:  # noqa: BLE001 - reported as the unit's failure
            return "failed", unit, exc
        target = self.paths.prob_store(unit)
        publish(target)  # a store written in a background process was not handed over there
        info.update(device=self.device_name, batch_size=self.batch_size.size)
        return "done", unit, UnitResult([target], counts, info)


def predictions_made_from(exp: Experiment) -> Callable[[str], str]:
    """Chunk id -> digest of what its probability store is made from: the run that staged its
    tiles, the model files, the settings that change probabilities (scales, TTA, precision,
    the blending of overlaps) and, with several scales, the threshold of the scale hits."""
    staged = done_runs(RunPaths.of(exp), "create_tiles")
    inference = exp.inference
    settings = {
        "model": model_hashes(local_model_dir(exp)),
        "scales": list(inference.scales),
        "tta": inference.tta,
        "precision": inference.precision,
        "method": exp.merge.method,
        "threshold": threshold_identity(exp) if len(inference.scales) > 1 else None,
    }
    return lambda unit: digest(settings, staged.get(unit))


STAGE = Stage(
    name="predict",
    units=predict_units,
    expected=lambda exp, unit: [PROB_STORE.format(unit)],
    worker=PredictWorker,
    check=check_model_and_grid,
    made_from=predictions_made_from,
    prepare=_prepare,
    uses_gpu=True,
)


def predict(exp: Experiment, force: bool = False, shard: tuple[int, int] | None = None):
    """Predict every chunk (see ``run.driver.run``)."""
    return run(STAGE, exp, force=force, shard=shard)

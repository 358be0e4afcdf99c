"""Stage ``predict``: every tile store in, one probability store per chunk out.

Every tile is predicted exactly once per run (it belongs to one chunk); a chunk whose
probability store exists is skipped unless ``force``.
"""

from __future__ import annotations

import logging

from .config import Experiment
from .errors import DeepSegError
from .grid import TileGrid
from .inference import predict_chunk
from .model import load_model
from .outputs import RunPaths
from .progress import progress
from .runlog import record_stage, update_run_log
from .storage import local_model_dir, model_hashes
from .stores import read_tile_store, write_prob_store

log = logging.getLogger(__name__)


def predict(exp: Experiment, force: bool = False) -> dict[str, int]:
    """Predict every staged chunk; returns counts of chunks and tiles."""
    if exp.merge.method != "max":
        raise DeepSegError(f"merge.method: {exp.merge.method!r} is not implemented yet; use max")
    grid = TileGrid.from_experiment(exp)
    paths = RunPaths.of(exp)
    stores = paths.tile_stores()
    if not stores:
        raise DeepSegError(f"{paths.show(paths.tiles)}: no tile stores; run create_tiles.py first")
    model_dir = local_model_dir(exp)
    model = load_model(model_dir, len(exp.input.bands), exp.inference.device)
    threshold = exp.merge.threshold if exp.merge.threshold is not None else model.threshold
    update_run_log(
        paths,
        model_checkpoint=str(exp.model.dir / "best_model.pth"),
        model_files=model_hashes(model_dir),
        model_version=str(model.config.get("model_version", "unknown")),
        normalization_stats_hash=model.stats_md5,
        threshold=threshold,
        scales_used=list(exp.inference.scales),
        tta_config=exp.inference.tta,
    )
    counts = {"chunks_written": 0, "chunks_skipped": 0, "tiles": 0, "tiles_with_detection": 0}
    with record_stage(paths, "predict", counts):
        for path in progress(stores, len(stores), "predict: chunks", log):
            target = paths.prob_store(path.stem)
            if not force and paths.done(target):
                counts["chunks_skipped"] += 1
                continue
            store = read_tile_store(paths.local(path))
            prob, hits, detected = predict_chunk(store, model, exp, grid, threshold)
            write_prob_store(
                target,
                grid,
                exp.crs,
                store.chunk,
                grid.chunk_footprint(*store.chunk),
                prob,
                hits,
                threshold,
                exp.inference.scales,
            )
            counts["chunks_written"] += 1
            counts["tiles"] += len(store.tiles)
            counts["tiles_with_detection"] += detected
    log.info("predict: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts

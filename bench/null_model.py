"""``throughput.py --null-model``: the predict stage with a network that costs nothing.

What is left is the engine's own work (reading tile stores, normalizing, cutting, scales and
TTA, merging tiles, writing probability stores): tile locations/s per core for each
``inference.io_workers`` setting, and a cProfile of one run with the reads and writes inline
(its top hot spots and ms per tile in each phase), against the rates a 16-core GPU host must
feed (``FEED``). Run through ``throughput.py``; see its docstring.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from handover import WAYS, handover_ms  # noqa: E402
from staging import staged  # noqa: E402
from throughput import (  # noqa: E402
    CONFIGS,
    _num,
    base_experiment,
    configured,
    timed_stage,
)

from deepseg.config import Experiment  # noqa: E402
from deepseg.model.inference import predict_footprint  # noqa: E402
from deepseg.run.driver import run  # noqa: E402
from deepseg.stages import predict as predicting  # noqa: E402
from deepseg.stages.predict import STAGE, PredictWorker  # noqa: E402
from deepseg.stores.chunk_io import write_and_describe  # noqa: E402
from deepseg.stores.tile_store import read_tile_store  # noqa: E402

FEED = {"s2-minimal": 870, "s1-none": 3500}  # tile locations/s a 16-core GPU host must feed


class NullNetwork(torch.nn.Module):
    """Logits at no cost: the input's first band, a (N, 1, H, W) view of it (no compute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def null_worker(exp: Experiment) -> PredictWorker:
    """The real predict worker of ``exp`` (its model folder loaded by load_model), its
    network then swapped for ``NullNetwork``."""
    worker = PredictWorker(exp)
    worker.model.network = NullNetwork()
    return worker


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (the
    I/O processes of a stage end with it)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def null_measure(exp: Experiment, config: str, io_workers: int, repeat: int) -> dict:
    """A row of the null-model table: the best of ``repeat`` stage runs with
    ``inference.io_workers`` = ``io_workers``, after an untimed run over the first chunk."""
    inference = dataclasses.replace(exp.inference, io_workers=io_workers)
    exp = dataclasses.replace(exp, inference=inference)
    worker = null_worker(exp)
    run(dataclasses.replace(STAGE, worker=lambda _: worker), exp, force=True, shard=(0, 10**9))
    stages = []
    for _ in range(repeat):
        before = cpu_seconds()
        stage = timed_stage(exp, worker)
        stages.append({**stage, "cpu_s": cpu_seconds() - before})
    best = max(stages, key=lambda s: s["e2e_tiles_s"])
    cores = os.cpu_count() or 1
    busy = best["cpu_s"] / best["seconds"]
    return {
        **best,
        "config": config,
        "io_workers": io_workers,
        "batch": inference.batch_size,
        "busy_cores": busy,
        "per_busy_core": best["e2e_tiles_s"] / busy,
        "per_core": best["e2e_tiles_s"] / cores,
        "steady_per_core": best["steady_tiles_s"] and best["steady_tiles_s"] / cores,
    }


def null_table(rows: list[dict]) -> list[str]:
    """Markdown rows of the null-model runs."""
    cores = os.cpu_count() or 1
    lines = [
        "| config | io_workers | tiles | wall s | end-to-end tiles/s | steady tiles/s "
        f"| CPU s | busy cores | tiles/s per busy core | tiles/s per core (of {cores}) "
        "| steady tiles/s per core |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['io_workers']} | {r['tiles']} | {r['seconds']:.1f} "
            f"| {_num(r['e2e_tiles_s'])} | {_num(r['steady_tiles_s'])} | {r['cpu_s']:.1f} "
            f"| {r['busy_cores']:.2f} | {_num(r['per_busy_core'])} | {_num(r['per_core'])} "
            f"| {_num(r['steady_per_core'])} |"
        )
    return lines


def _done(call: Callable, *args: object) -> Future:
    future: Future = Future()
    try:
        future.set_result(call(*args))
    except Exception as exc:  # noqa: BLE001 - the worker reports it, as from a pool
        future.set_exception(exc)
    return future


class InlineIO:
    """ChunkIO's reads and writes, done at once in the calling thread (for cProfile)."""

    depth = 2
    last: dict[str, Any] = {}  # the last tile store (and path) and probability store

    def __init__(self, workers: int) -> None:
        del workers

    def read(self, path: Path, fetch: Callable[[Path], Path]) -> Future:
        InlineIO.last["path"] = fetch(path)
        future = _done(read_tile_store, InlineIO.last["path"])
        InlineIO.last["tiles"] = future.result()
        return future

    def write(self, path: Path, store: object) -> Future:
        InlineIO.last["prob"] = store
        return _done(write_and_describe, path, store)

    def __enter__(self) -> InlineIO:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


PHASES = {  # the profile's phases: the function whose cumulative time is the phase's
    "read tile stores (host)": read_tile_store,
    "normalize, cut, scales, TTA, merge (GPU on a GPU host)": predict_footprint,
    "write probability stores (host)": write_and_describe,
}
IPC = "hand-over of both stores, main + I/O process, io_workers > 0 (host)"


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name  # a built-in
    parts = Path(path).parts
    short = "/".join(parts[parts.index("deepseg") :]) if "deepseg" in parts else Path(path).name
    return f"{name} ({short}:{line})"


def null_profile(exp: Experiment, top: int) -> tuple[list[str], dict]:
    """The predict stage with the null network under cProfile, reads and writes inline: the
    top functions by own time (a table) and the seconds of each phase."""
    worker = null_worker(exp)
    io, predicting.ChunkIO = predicting.ChunkIO, InlineIO
    profile = cProfile.Profile()
    try:
        start = time.perf_counter()
        profile.enable()
        summary = run(dataclasses.replace(STAGE, worker=lambda _: worker), exp, force=True)
        profile.disable()
        seconds = time.perf_counter() - start
    finally:
        predicting.ChunkIO = io
    stats = pstats.Stats(profile).stats  # func -> (calls, primitive, own s, cumulative s, ...)
    total = sum(own for _, _, own, _, _ in stats.values())
    hot = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [
        "| function | calls | own s | share | cumulative s |",
        "|---|---|---|---|---|",
        *(
            f"| `{_where(func)}` | {calls:,} | {own:.2f} | {own / total:.0%} | {cum:.2f} |"
            for func, (calls, _, own, cum, _) in hot
        ),
    ]
    codes = {
        (f.__code__.co_filename, f.__code__.co_firstlineno, f.__name__): k
        for k, f in PHASES.items()
    }
    phases = {codes[func]: st[3] for func, st in stats.items() if func in codes}
    tiles = summary["counts"]["tiles"]
    per_chunk = len(InlineIO.last["tiles"].tiles)  # tiles in the stores handed over
    handover = handover_ms(InlineIO.last["path"], InlineIO.last["prob"])
    handover = {way: {k: v / per_chunk for k, v in ms.items()} for way, ms in handover.items()}
    phases[IPC] = tiles * sum(handover["shared memory"].values()) / 1000
    return lines, {
        "tiles": tiles, "seconds": seconds, "profiled_s": total, "phases": phases,
        "handover": handover,
    }  # fmt: skip


def handover_table(profiles: dict[str, dict]) -> list[str]:
    """CPU ms per tile of handing a chunk's two stores between processes, each way."""
    lines = [
        "| hand-over of both stores, CPU ms per tile (io_workers > 0) | "
        + " | ".join(f"{c}: main | {c}: I/O process" for c in profiles)
        + " |",
        "|---|" + "---|---|" * len(profiles),
    ]
    for way in WAYS:
        cells = [f"{p['handover'][way]['main']:.2f} | {p['handover'][way]['io']:.2f}"
                 for p in profiles.values()]  # fmt: skip
        name = "pickled through the pool's pipe (before)" if way == "pickled" else way
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def null_main(args: argparse.Namespace, argv: list[str] | None) -> list[dict]:
    """--null-model: every io_workers x configuration, then the profile of one run."""
    load = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    base = base_experiment(args)
    scale_sets = {CONFIGS[c][0] for c in args.configs}
    processes = max(1, min(8, args.chunks // 4))
    runs = {scales: staged(base, scales, processes) for scales in scale_sets}
    rows = []
    for config in args.configs:
        exp = configured(runs[CONFIGS[config][0]], "fp32", config, args.batch)
        for workers in args.io_workers:
            rows.append(null_measure(exp, config, workers, args.repeat))
    profiles = {}
    for config in args.configs:  # the last one's hot spots are shown
        exp = configured(runs[CONFIGS[config][0]], "fp32", config, args.batch)
        hot, profiles[config] = null_profile(exp, args.top)
    profiled, prof = args.configs[-1], profiles[args.configs[-1]]
    grid, cores = base.grid, os.cpu_count() or 1
    cpu = platform.processor() or platform.machine()
    command = "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ms = {
        c: {k: 1000 * v / p["tiles"] for k, v in p["phases"].items()} for c, p in profiles.items()
    }
    host = {c: sum(v for k, v in m.items() if k.endswith("(host)")) for c, m in ms.items()}
    lines = [
        f"Device: CPU {cpu}, {cores} cores, {torch.get_num_threads()} torch threads. Network: "
        f"NullNetwork (first band as the logit) in place of {args.arch or base.model.dir}. "
        f"Run: {'the demo' if args.demo else 'synthetic'}, {rows[0]['chunks']} chunks of "
        f"{grid.chunk_tiles}x{grid.chunk_tiles} tiles ({grid.tile_size} px, stride "
        f"{grid.stride} px), batch {rows[0]['batch']}, best of {args.repeat}. Load average at "
        f"the start: {load:.1f}.",
        "",
        *null_table(rows),
        "",
        f"Profile of one run per configuration (cProfile, reads and writes inline in the main "
        f"thread); {profiled}: {prof['tiles']} tiles in {prof['seconds']:.1f} s, top "
        f"{args.top} functions by own time (share: of the {prof['profiled_s']:.1f} s profiled):",
        "",
        *hot,
        "",
        "| phase, ms per tile | " + " | ".join(ms) + " |",
        "|---|" + "---|" * len(ms),
        *(
            f"| {k} | " + " | ".join(f"{m.get(k, 0):.1f}" for m in ms.values()) + " |"
            for k in [*PHASES, IPC]
        ),
        "| host side (read + write + hand-over), ms per tile | "
        + " | ".join(f"{h:.1f}" for h in host.values())
        + " |",
        "| host-side tiles/s per core (1000 / that) | "
        + " | ".join(f"{1000 / h:,.0f}" for h in host.values())
        + " |",
        "",
        *handover_table(profiles),
    ]
    print("\n".join(lines))
    if args.record:
        with open(args.results, "a") as fh:
            fh.write(
                f"\n## Null-model ceiling ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
                f"{platform.machine()})\n\n"
            )
            fh.write(f"`{command.strip()}`\n\n" + "\n".join(lines) + "\n")
            cpu = {f"predict_host_{c}": 1000 / h for c, h in host.items()}  # bench/project.py
            fh.write(f"\n<!-- cpu_rates {json.dumps(cpu)} -->\n")
    for row in rows:
        row["profile"] = profiles[row["config"]]
    return rows

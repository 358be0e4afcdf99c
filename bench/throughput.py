"""End-to-end tiles/s of the predict stage against the model's own tiles/s, on this device.

    python bench/throughput.py [--demo] [--model DIR | --arch unet-resnet34 | deepseg-unet]
        [--modes fp32 fp16 fp16-compile] [--configs s1-none s2-minimal s2-standard]
        [--chunks N] [--chunk-tiles K] [--batch B] [--threads N] [--record]
    python bench/throughput.py --null-model [--io-workers 0 1 2 4] [--configs s1-none s2-minimal]
        [--chunks N] [--chunk-tiles 16] [--repeat 1] [--top 10] [--record]

Model-only: the predict worker's own network (same weights, device, batch size, precision,
channels-last and compile setting as predict.py uses) on random normalized tiles already on
the device, timed after a warm-up (synchronized on CUDA). A configuration of S scales and a
TTA of K transforms costs S*K forward passes per tile, so its model-only rate is the
forward rate / (S*K).

End-to-end: the real predict stage (``runner.run`` of ``predicting.STAGE`` with force: tile
stores on disk -> probability stores on disk, background reads and writes, manifest and run
log) over every chunk of the run. Its worker is built and warmed first (model loading and
torch.compile are not timed): the clock starts when the runner asks for the worker and stops
when the stage returns; tiles = the stage's own count. "steady" is the pace between the
first and the last chunk finished (their manifest times), the pipeline's fill and drain left
out: a long run's pace, which the projected GPU-hours (40 million tiles) use.

Runs (``staging``): a synthetic scene of whole chunks (the production grid by default), or
with ``--demo`` the demo experiment (its scene, grid, batch size and model; CPU), staged by
create_tiles once per scale set. GPU utilization: nvidia-smi, every 0.2 s while the stage
runs. The time of a run on a busy machine varies: every figure is the best of ``--repeat``.

``--null-model``: the ceiling the engine puts on a GPU. The same real predict stage, its
worker built by PredictWorker (load_model loads the model folder as always), but the loaded
network is then swapped for ``NullNetwork``, which returns a view of the input's first band as
the logits (no compute, no copy; the probabilities still vary like the scene, so the
probability stores compress as real ones do rather than as a constant). What is left is
reading tile stores, normalizing, cutting, scales and TTA flips, merging tiles into chunk
probabilities and writing probability stores. For each ``inference.io_workers`` of
``--io-workers`` and each configuration: tiles/s end to end and steady, the CPU seconds the
process and its I/O processes spent (getrusage, self + children), the cores that kept busy
(CPU s / wall s) and tile locations/s per core: tiles/s over the busy cores (= tiles per CPU
second) and over the machine's cores. Then one run of each configuration under cProfile, its
reads and writes done inline in the main thread (``InlineIO``; cProfile sees one thread): the
last configuration's top ``--top`` functions by own time, and each one's ms per tile reading,
predicting and writing, plus the hand-over of a chunk's two stores between processes that
io_workers > 0 adds (shared memory and a small pickle, ``ipc_seconds``). On a CPU machine
normalizing, cutting and merging run on the CPU; on a GPU machine they run on the device,
and only reading, writing and the copies stay on the host's cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from staging import (  # noqa: E402
    DEMO_MODEL,
    demo_experiment,
    staged,
    synthetic_experiment,
    write_model_folder,
)

from deepseg.config import Experiment  # noqa: E402
from deepseg.core.progress import setup_logging  # noqa: E402
from deepseg.model.inference import AUTOCAST, TTA  # noqa: E402
from deepseg.model.loading import LoadedModel  # noqa: E402
from deepseg.run.driver import run  # noqa: E402
from deepseg.run.manifest import fold  # noqa: E402
from deepseg.stages.predict import STAGE, PredictWorker  # noqa: E402
from deepseg.storage.paths import RunPaths  # noqa: E402

CONFIGS = {  # the RTS spec's configurations: (inference.scales, inference.tta)
    "s1-none": ((1.0,), "none"),
    "s2-minimal": ((1.0, 0.5), "minimal"),
    "s2-standard": ((1.0, 0.5), "standard"),
}
ISSUE_TILES = 40_000_000
RESULTS = REPO / "bench" / "RESULTS.md"
RATES_MARK = "<!-- throughput "  # bench/project.py reads the rates from this line
WARMUP_CALLS = 3  # forward calls before timing (torch.compile compiles on the first)
IO_WORKERS = [0, 1, 2, 4]  # --null-model's default inference.io_workers settings


def parse_mode(mode: str) -> tuple[str, bool]:
    """``fp16-compile`` -> ("fp16", True): inference.precision and inference.compile."""
    precision, _, rest = mode.partition("-")
    if precision not in ("fp32", "fp16", "bf16") or rest not in ("", "compile"):
        raise SystemExit(f"--modes: expected fp32|fp16|bf16, optionally -compile; got {mode!r}")
    return precision, rest == "compile"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(model: LoadedModel, batch: int, tile: int, precision: str, seconds: float):
    """Tiles/s of ``model.network`` alone on a random normalized batch on its device, as
    ``inference.probabilities`` feeds it (channels-last on CUDA, autocast for fp16/bf16)."""
    x = torch.randn(batch, len(model.mean), tile, tile, device=model.device)
    if model.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    cast = (
        torch.autocast(model.device.type, dtype=AUTOCAST[precision])
        if precision in AUTOCAST
        else nullcontext()
    )
    with torch.inference_mode(), cast:
        for _ in range(WARMUP_CALLS):
            model.network(x)
        _sync(model.device)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds:
            model.network(x)
            _sync(model.device)
            calls += 1
    return calls * batch / (time.perf_counter() - start)


@contextmanager
def gpu_utilization(device: torch.device) -> Iterator[list[float]]:
    """nvidia-smi's utilization.gpu (%) of ``device``, sampled every 0.2 s while in the block
    (none on CPU, or where nvidia-smi cannot run)."""
    samples: list[float] = []
    if device.type != "cuda":
        yield samples
        return
    uuid = torch.cuda.get_device_properties(device).uuid  # nvidia-smi names it GPU-{uuid}
    query = ["nvidia-smi", f"--id=GPU-{uuid}", "--query-gpu=utilization.gpu"]
    try:
        smi = subprocess.Popen(
            [*query, "--format=csv,noheader,nounits", "--loop-ms=200"],
            stdout=subprocess.PIPE,
            text=True,
        )
    except OSError:
        yield samples
        return

    def read() -> None:
        for line in smi.stdout or ():
            if line.strip().isdigit():
                samples.append(float(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield samples
    finally:
        smi.terminate()
        reader.join(timeout=5)


def steady_rate(exp: Experiment, since: dt.datetime) -> float | None:
    """Tiles/s between the first and the last chunk the stage finished after ``since`` (their
    manifest times); None with fewer than two chunks."""
    states = fold(RunPaths.of(exp), "predict").values()
    ended = sorted(
        (dt.datetime.fromisoformat(s.ended), s.counts.get("tiles", 0))
        for s in states
        if s.status == "done" and s.ended and dt.datetime.fromisoformat(s.ended) >= since
    )
    if len(ended) < 2:
        return None
    return sum(tiles for _, tiles in ended[1:]) / (ended[-1][0] - ended[0][0]).total_seconds()


def configured(base: Experiment, mode: str, config: str, batch: int | None) -> Experiment:
    """``base`` with the configuration's scales and TTA and the mode's precision/compile."""
    precision, compiled = parse_mode(mode)
    scales, tta = CONFIGS[config]
    inference = dataclasses.replace(
        base.inference,
        scales=scales,
        tta=tta,
        precision=precision,
        compile=compiled,
        batch_size=batch or base.inference.batch_size,
    )
    return dataclasses.replace(base, inference=inference)


def timed_stage(exp: Experiment, worker: PredictWorker) -> dict:
    """The predict stage over every chunk with ``worker``: tiles, seconds, steady tiles/s and
    mean GPU utilization. The clock starts when the runner asks for its worker."""
    clock: dict = {}

    def handed_over(_: Experiment) -> PredictWorker:
        clock["since"], clock["start"] = dt.datetime.now(dt.timezone.utc), time.perf_counter()
        return worker

    with gpu_utilization(worker.model.device) as gpu:
        summary = run(dataclasses.replace(STAGE, worker=handed_over), exp, force=True)
        seconds = time.perf_counter() - clock["start"]
    tiles = summary["counts"]["tiles"]
    return {
        "tiles": tiles,
        "chunks": summary["done"],
        "seconds": seconds,
        "e2e_tiles_s": tiles / seconds,
        "steady_tiles_s": steady_rate(exp, clock["since"]),
        "gpu_util": sum(gpu) / len(gpu) if gpu else None,
    }


def measure(
    exp: Experiment, mode: str, config: str, repeat: int, seconds: float
) -> tuple[dict, LoadedModel]:
    """A row of the table (and the model): the best of ``repeat`` model-only timings and of
    ``repeat`` stage runs, after an untimed stage run over the first chunk (a warm-up)."""
    worker = PredictWorker(exp)
    inference = exp.inference
    run(dataclasses.replace(STAGE, worker=lambda _: worker), exp, force=True, shard=(0, 10**9))
    forward, stages = 0.0, []
    for _ in range(repeat):
        batch, tile = inference.batch_size, exp.grid.tile_size
        forward = max(
            forward, forward_rate(worker.model, batch, tile, inference.precision, seconds)
        )
        stages.append(timed_stage(exp, worker))
    best = max(stages, key=lambda s: s["e2e_tiles_s"])
    steady = max((s["steady_tiles_s"] or 0 for s in stages), default=0) or None
    passes = len(inference.scales) * len(TTA[inference.tta])
    model_only, rate = forward / passes, steady or best["e2e_tiles_s"]
    return {
        **best,
        "mode": mode,
        "config": config,
        "passes": passes,
        "batch": inference.batch_size,
        "forward_tiles_s": forward,
        "model_tiles_s": model_only,
        "ratio": best["e2e_tiles_s"] / model_only,
        "steady_tiles_s": steady,
        "steady_ratio": steady and steady / model_only,
        "rate_tiles_s": rate,
        "hours_40M": ISSUE_TILES / rate / 3600,
    }, worker.model


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    """Markdown rows; ratios are end-to-end (or steady) tiles/s over model-only tiles/s."""
    lines = [
        "| mode | config | passes/tile | tiles | model-only tiles/s | end-to-end tiles/s | ratio "
        "| steady tiles/s | steady ratio | GPU util % | hours, 40 M tiles (steady) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['config']} | {r['passes']} | {r['tiles']} "
            f"| {_num(r['model_tiles_s'])} | {_num(r['e2e_tiles_s'])} | {r['ratio']:.2f} "
            f"| {_num(r['steady_tiles_s'])} | {_num(r['steady_ratio'], 2)} "
            f"| {_num(r['gpu_util'], 0)} | {_num(r['hours_40M'])} |"
        )
    return lines


def describe(model: LoadedModel, name: str) -> tuple[str, str]:
    """(device, model) in words."""
    if model.device.type == "cuda":
        device = f"{torch.cuda.get_device_name(model.device)} (torch {torch.__version__})"
    else:
        cpu = platform.processor() or platform.machine()
        device = f"CPU {cpu}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores"
    params = sum(p.numel() for p in model.network.parameters()) / 1e6
    return device, f"{name} ({model.framework}, {params:.2f} M parameters)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="the demo experiment, on the CPU")
    p.add_argument("--model", type=Path, help="a model folder (default: the demo's)")
    p.add_argument("--arch", choices=("unet-resnet34", "deepseg-unet"), help="random weights")
    p.add_argument(
        "--modes", nargs="+", default=["fp32", "fp16", "fp16-compile"][: 3 if gpu else 1]
    )
    p.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        help="default: all; --null-model: s1, s2-minimal",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--chunks", type=int, default=32 if gpu else 4, help="chunks in the run")
    p.add_argument("--chunk-tiles", type=int, help="default: 16 on a GPU or --null-model, else 4")
    p.add_argument("--tile-size", type=int, default=512, help="px")
    p.add_argument("--stride", type=int, default=256, help="px")
    p.add_argument("--batch", type=int, default=32 if gpu else None, help="default: the run's")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument(
        "--repeat", type=int, help="best of N timings (1 on a GPU or --null-model, else 3)"
    )
    p.add_argument("--model-seconds", type=float, default=5.0, help="model-only timing, s")
    p.add_argument("--work", type=Path, default=Path("/tmp/deepseg-bench"), help="scratch")
    p.add_argument("--results", type=Path, default=RESULTS, help="where --record appends")
    p.add_argument("--record", action="store_true", help="append the table to --results")
    p.add_argument("--null-model", action="store_true", help="a network that costs nothing")
    p.add_argument("--io-workers", type=int, nargs="+", default=IO_WORKERS, help="--null-model")
    p.add_argument("--top", type=int, default=10, help="--null-model: hot spots shown")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if gpu or args.null_model else 3
    if args.chunk_tiles is None:
        args.chunk_tiles = 16 if gpu or args.null_model else 4
    if args.configs is None:
        args.configs = ["s1-none", "s2-minimal"] if args.null_model else list(CONFIGS)
    return args


def base_experiment(args: argparse.Namespace) -> Experiment:
    """The demo's experiment, or the synthetic run's, with the chosen model."""
    model_dir = args.model
    if args.arch:
        model_dir = write_model_folder(args.arch, args.work / "models" / args.arch)
    if args.demo:
        return demo_experiment(args.work, model_dir)
    grid = {"tile_size": args.tile_size, "stride": args.stride, "chunk_tiles": args.chunk_tiles}
    return synthetic_experiment(args.work, model_dir or DEMO_MODEL, args.chunks, grid, args.device)


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every mode x configuration; print (and with --record append) the table."""
    args = parse_args(argv)
    setup_logging()
    if args.null_model:
        from null_model import null_main  # it uses this module's stage timing

        return null_main(args, argv)
    load = os.getloadavg()[0]
    torch.set_num_threads(args.threads)  # the same threads for model-only and end-to-end
    base = base_experiment(args)
    scale_sets = {CONFIGS[c][0] for c in args.configs}
    processes = max(1, min(8, args.chunks // 4))  # create_tiles shards staged at once
    runs = {scales: staged(base, scales, processes) for scales in scale_sets}
    rows = []
    for mode in args.modes:
        for config in args.configs:
            exp = configured(runs[CONFIGS[config][0]], mode, config, args.batch)
            row, model = measure(exp, mode, config, args.repeat, args.model_seconds)
            rows.append(row)
    device, model_name = describe(model, args.arch or str(base.model.dir))
    grid = base.grid
    command = "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Device: {device}. Model: {model_name}. Run: {'the demo' if args.demo else 'synthetic'}"
        f", {rows[0]['chunks']} chunks of {grid.chunk_tiles}x{grid.chunk_tiles} tiles "
        f"({grid.tile_size} px, stride {grid.stride} px), batch {rows[0]['batch']}, best of "
        f"{args.repeat}. Load average at the start: {load:.1f}.",
        "",
        *table(rows),
    ]
    print("\n".join(lines))
    if args.record:
        record = {"device": device, "model": model_name, "rows": rows}
        with open(args.results, "a") as fh:
            fh.write(f"\n## Throughput ({time.strftime('%Y-%m-%d')}, {platform.node()})\n\n")
            fh.write(f"`{command.strip()}`\n\n" + "\n".join(lines) + "\n\n")
            fh.write(f"{RATES_MARK}{json.dumps(record)} -->\n")
    return rows


if __name__ == "__main__":
    main()

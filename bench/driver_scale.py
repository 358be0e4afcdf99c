"""The driver's own cost on a continent-sized stage: 10^6 no-op units (issue: O(units)).

    python bench/driver_scale.py [--units 1000000] [--workers 1000] [--record]

A stage of ``--units`` units whose work costs nothing: each unit expects one output file, and
its executor writes the journals ``--workers`` workers would leave after doing every unit (a
header, then a ``running`` and a ``done`` record each, as ``work`` writes them, without the
per-record fsync that is a real unit's cost, not the driver's). Timed: listing and sharding
the units, splitting them into Slurm arrays, a first driver run (every unit pending: list,
look for outputs, hand out, fold 2 x units records, write the manifest, report; the time the
executor took writing the journals is shown apart), and a rerun of the finished stage (every
unit skipped). Runs in a child process; prints seconds per phase and the child's peak RSS
(from the kernel).
``--record`` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from deepseg.config import load_experiment  # noqa: E402
from deepseg.run import driver  # noqa: E402
from deepseg.run.executors import EXECUTORS  # noqa: E402
from deepseg.run.executors.slurm import split_units  # noqa: E402
from deepseg.run.journal import header_line, record_line  # noqa: E402
from deepseg.run.stage import Stage, select_shard  # noqa: E402
from deepseg.storage.paths import PROB_STORE, RunPaths  # noqa: E402


def no_op_stage(n_units: int) -> Stage:
    """``n_units`` units, each expecting a store as predict's do; no worker is needed."""

    def expected(exp, unit: str) -> list[str]:
        return [PROB_STORE.format(unit)]  # as stages.predict's (not imported: torch's memory)

    def no_worker(exp):
        raise AssertionError("the bench executor does the units itself")

    units = [f"c{i // 1000:05d}_r{i % 1000:05d}" for i in range(n_units)]
    return Stage("noop", lambda exp: list(units), expected, no_worker)


def journal_writer(n_workers: int, spent: dict[str, float]):
    """An executor writing the journals ``n_workers`` workers leave after every unit; adds
    its seconds to ``spent["executor"]`` (the workers' cost, not the driver's)."""

    def run(stage, exp, units, run_id, force) -> None:
        start = time.perf_counter()
        write(stage, exp, units, run_id)
        spent["executor"] = spent.get("executor", 0.0) + time.perf_counter() - start

    def write(stage, exp, units, run_id) -> None:
        folder = RunPaths.of(exp).logs / "manifest" / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        share = -(-len(units) // n_workers)
        for w in range(n_workers):
            worker = f"bench-{w}"
            with open(folder / f"{worker}.jsonl", "a", encoding="utf-8") as out:
                out.write(header_line(run=run_id, worker=worker, host="bench"))
                for unit in units[w * share : (w + 1) * share]:
                    out.write(record_line(unit, "running"))
                    out.write(record_line(unit, "done", outputs=[], counts={"n": 1}))

    return run


def measure(n_units: int, n_workers: int, work: Path) -> dict[str, float]:
    exp_path = work / "bench.yaml"
    exp_path.write_text(
        yaml.safe_dump(
            {
                "name": "driver-bench",
                "output": {"path": str(work / "out")},
                "input": {"rasters": [str(work / "absent.tif")]},
                "model": {"dir": str(work / "absent-model")},
            }
        )
    )
    exp = load_experiment(exp_path, check_inputs=False)
    spent: dict[str, float] = {}
    EXECUTORS["local"] = journal_writer(n_workers, spent)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    stage = no_op_stage(n_units)
    units = stage.units(exp)
    shards = [select_shard(units, (i, 64)) for i in range(64)]
    assert sum(map(len, shards)) == n_units
    seconds["list + shard (64 shards)"] = time.perf_counter() - start
    start = time.perf_counter()
    arrays = split_units(units, exp.cluster.slurm)
    assert sum(len(t) for a in arrays for t in a) == n_units
    seconds["split into Slurm arrays"] = time.perf_counter() - start
    start = time.perf_counter()
    first = driver.run(stage, exp)
    assert first["done"] == n_units and first["skipped"] == 0, first
    seconds["first run: all pending (driver only)"] = (
        time.perf_counter() - start - spent["executor"]
    )
    seconds["(the workers' journals, written in the first run)"] = spent["executor"]
    start = time.perf_counter()
    again = driver.run(stage, exp)
    assert again["skipped"] == n_units, again
    seconds["rerun: all done"] = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {**seconds, "peak_rss_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.units, args.workers, args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="deepseg-driver-bench-") as work:
        cmd = [sys.executable, __file__, "--units", str(args.units), "--workers",
               str(args.workers), "--child", work]  # fmt: skip
        child = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if child.returncode:
        sys.exit(child.stderr[-3000:])
    result = json.loads(child.stdout.strip().splitlines()[-1])
    peak = result.pop("peak_rss_gib")
    rows = "\n".join(f"| {phase} | {s:.2f} |" for phase, s in result.items())
    table = (
        f"| phase ({args.units:,} units, {args.workers} workers' journals) | seconds |\n"
        f"|---|---|\n{rows}\n\nPeak RSS of the whole process: {peak:.2f} GiB "
        "(target: under 10 s per driver run and 1 GiB)."
    )
    print(table)
    if args.record:
        day = time.strftime("%Y-%m-%d")
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as out:
            out.write(
                f"\n## Driver and manifest at 10^6 units ({day}, {platform.node()}, "
                f"{platform.machine()})\n\n`python bench/driver_scale.py --units {args.units} "
                f"--workers {args.workers} --record`\n\n{table}\n"
            )


if __name__ == "__main__":
    main()

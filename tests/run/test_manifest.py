"""The fold of the workers' journals: per unit, the same state as reading record by record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from deepseg.run.journal import WHO, journal_records
from deepseg.run.manifest import UnitState, _fold_journals


def fold_record_by_record(journals: list[Path]) -> dict[str, UnitState]:
    """The fold's rules applied one record at a time, in file order (the reference)."""
    states, latest, finished = {}, {}, {}
    for path in journals:
        who = {}  # the header's, for the records after it
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "unit" not in rec:
                who = {key: rec.get(key) for key in WHO}
                continue
            rec = {**who, **rec}
            unit, time_, status = rec["unit"], rec["time"], rec["status"]
            state = states.setdefault(unit, UnitState(unit, status))
            if time_ >= latest.get(unit, ""):
                latest[unit], state.status = time_, status
                for key in WHO:
                    setattr(state, key, rec.get(key))
            if status == "running":
                state.attempts += 1
                state.started = max(state.started or "", time_)
            elif time_ >= finished.get(unit, ""):
                finished[unit] = time_
                state.error, state.made_from = rec.get("error"), rec.get("made_from")
                state.outputs = rec.get("outputs", [])
                state.counts, state.info = rec.get("counts", {}), rec.get("info", {})
    for unit, state in states.items():
        end = finished.get(unit)
        if state.started is not None and (end is None or state.started > end):
            state.ended, state.error = None, None
        else:
            state.ended = end
    return states


def write_journals(folder: Path, seed: int) -> list[Path]:
    """Workers retrying each other's units, killed mid-unit, a clock that steps back, equal
    times, a torn last line; journals with headers (one or a few runs each), and from before
    headers (every record naming its writer)."""
    rng = random.Random(seed)
    paths = []
    for w in range(6):
        clock = rng.randrange(0, 50)
        lines = []
        legacy = w in (0, 3)
        for i in range(rng.randrange(5, 40)):
            unit = f"c{rng.randrange(30):05d}_r00000"
            clock += rng.choice([0, 1, 1, 2, -7 if w == 2 else 1])  # worker 2's clock steps
            if legacy or i == 0 or rng.random() < 0.1:  # a header: another run of the worker
                who = {"run": f"run{rng.randrange(3)}", "worker": f"w{w}", "host": "h"}
                if not legacy:
                    lines.append({**who, "slurm_job": str(w), "opened": f"{clock:06d}"})
                    who = {}
            if i % 7 == 3:  # found complete on disk (a unit no one started): done, no start
                found = f"c{100 + w * 50 + i:05d}_r00000"
                done = {"unit": found, "status": "done", "time": f"{clock:06d}", **who}
                lines.append({**done, "outputs": [f"out/{found}.kea"], "recovered": True})
                continue
            lines.append({"unit": unit, "status": "running", "time": f"{clock:06d}", **who})
            end = rng.choice(["done", "done", "failed", None])
            if end is None:
                continue  # killed: no end record
            clock += rng.choice([0, 1, 3])
            rec = {"unit": unit, "status": end, "time": f"{clock:06d}", **who}
            if end == "done":
                rec.update(outputs=[f"out/{unit}.kea"], counts={"n": w}, made_from=f"m{w}")
            else:
                rec["error"] = f"boom {w}"
            lines.append(rec)
        text = "".join(json.dumps(r) + "\n" for r in lines)
        if w == 4:
            text += '{"unit": "c00001_r00000", "sta'  # a worker killed while writing
        path = folder / f"w{w}.jsonl"
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.mark.parametrize("seed", range(8))
def test_fold_equals_reading_record_by_record(tmp_path, seed):
    journals = write_journals(tmp_path, seed)
    expected = fold_record_by_record(journals)
    got = _fold_journals(journals)
    assert got == expected
    assert any(s.attempts > 1 for s in got.values())  # the case that merges journals
    assert any(s.ended is None for s in got.values())  # and the interrupted one
    assert {s.slurm_job for s in got.values()} > {None}  # named by headers and by records
    assert any(s.attempts == 0 for s in got.values())  # recovered, never started


def test_journal_records_name_their_writer(tmp_path):
    journals = write_journals(tmp_path, 1)
    records = [r for j in journals for r in journal_records(j)]
    assert records and all(r["worker"] and r["unit"] and r["run"] for r in records)
    assert {r["worker"] for r in records} == {f"w{w}" for w in range(6)}


def test_manifest_holds_every_field_of_every_unit(tmp_path):
    from dataclasses import asdict

    from deepseg.run.manifest import write_manifest
    from deepseg.storage.paths import RunPaths

    states = _fold_journals(write_journals(tmp_path, 0))
    states["c99999_r00000"] = UnitState("c99999_r00000", "done", counts={"ratio": float("nan")})
    target = write_manifest(RunPaths(tmp_path / "out"), "predict", states)
    manifest = json.loads(target.read_text())
    assert manifest["stage"] == "predict"
    want = [asdict(states[u]) for u in sorted(states)]
    want[-1]["counts"]["ratio"] = None  # JSON has no NaN
    assert manifest["units"] == want


@pytest.mark.parametrize(
    ("first", "more"),
    [
        (({"c1": "r1", "c0": "r0"},), ({"box": [0, 1]}, 0.5, {"k": "v"})),
        ((), ("a", 1)),
        (({"c1": "r1"}, [1, 2]), ()),
        ((), ()),
        ((Path("/x"), None), (float("inf"), "b")),
    ],
)
def test_digest_after_equals_the_whole_digest(first, more):
    from deepseg.run.manifest import digest, digest_after

    assert digest_after(*first)(*more) == digest(*first, *more)
    if first or more:
        assert digest_after(*first)(*more, "x") != digest(*first, *more)

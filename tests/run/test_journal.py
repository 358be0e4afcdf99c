"""A worker's journal: one header per writer, records that the fold attributes to it."""

from __future__ import annotations

import json

from deepseg.run.journal import Journal, journal_records, read_journal
from deepseg.run.manifest import _fold_journals
from deepseg.storage.paths import RunPaths


def test_each_journal_opened_writes_its_header_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    paths = RunPaths(tmp_path)
    first = Journal(paths, "predict", "run-a")
    assert not first.path.exists()  # nothing recorded: no file
    first.record("c1", "running")
    first.record("c1", "done", outputs=["predictions/c1.kea"], counts={"tiles": 3})
    second = Journal(paths, "predict", "run-b")  # the same process, so the same file
    assert second.path == first.path
    second.record("c2", "running")
    second.path.unlink()  # removed meanwhile: the next record starts a new file, headed
    second.record("c3", "running")
    assert [who for who, _ in read_journal(second.path)][0][:1] == ("run-b",)
    lines = [json.loads(line) for line in first.path.read_text().splitlines()]
    assert "unit" not in lines[0] and lines[0]["slurm_job"] == "77"
    assert [line.get("unit") for line in lines] == [None, "c3"]


def test_records_name_the_run_of_their_header(tmp_path):
    paths = RunPaths(tmp_path)
    for run, unit in (("run-a", "c1"), ("run-b", "c2"), ("run-b", "c1")):
        journal = Journal(paths, "predict", run)
        journal.record(unit, "running")
        journal.record(unit, "done", outputs=[])
    records = journal_records(journal.path)
    assert [(r["run"], r["unit"], r["status"]) for r in records] == [
        ("run-a", "c1", "running"), ("run-a", "c1", "done"),
        ("run-b", "c2", "running"), ("run-b", "c2", "done"),
        ("run-b", "c1", "running"), ("run-b", "c1", "done"),
    ]  # fmt: skip
    assert all(r["worker"] == journal.worker and r["host"] for r in records)
    states = _fold_journals([journal.path])
    assert (states["c1"].run, states["c1"].attempts, states["c2"].run) == ("run-b", 2, "run-b")
    assert states["c1"].slurm_job is None and states["c1"].status == "done"


def test_a_header_after_a_torn_line_starts_its_own_line(tmp_path):
    paths = RunPaths(tmp_path)
    killed = Journal(paths, "predict", "run-a")
    killed.record("c1", "running")
    with open(killed.path, "a") as fh:
        fh.write('{"unit": "c1", "sta')  # killed while writing; its name is reused later
    again = Journal(paths, "predict", "run-b")
    again.record("c2", "running")
    assert [(r["run"], r["unit"]) for r in journal_records(again.path)] == [
        ("run-a", "c1"),
        ("run-b", "c2"),
    ]

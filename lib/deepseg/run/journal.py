"""Each worker's journal of a stage: what it did to each unit, one JSON line per event.

Every worker process appends to its OWN journal, ``logs/manifest/{stage}/{worker}.jsonl``
(flushed and fsynced per line), so concurrent Slurm array tasks never write the same file and
a crash loses at most the line being written. A journal opens with a *header* line saying who
writes the records after it, ``{"run", "worker", "host", "slurm_job", "slurm_array_job",
"slurm_array_task", "opened"}`` (no ``unit``), then one *record* per event: ``{"unit",
"status", "time", ...}`` with status ``running`` (a unit started), ``done`` (its outputs were
renamed into place; ``outputs`` lists them, relative to ``output.path``; ``counts`` are summed
in the run log; ``info`` holds facts later stages read, e.g. a probability store's valid box;
``made_from`` a digest of the inputs and settings it was made from) or ``failed`` (``error``
holds the text, ``made_from`` what the outputs it left in place were made from). A process
that opens a second journal on one file (another run) writes a second header. Who is written
once per header, not per record: a 10^6-unit stage is read by one driver, and every repeated
field is parsed 10^6 times. Records of journals written before headers existed name who
themselves (``journal_records`` reads both). Times are UTC ISO 8601.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Literal

import orjson

from ..storage.paths import RunPaths, publish

PUBLISH_EVERY_S = 30.0  # a gs:// run uploads a worker's journal at most this often (and at end)
WHO = ("run", "worker", "host", "slurm_job", "slurm_array_job", "slurm_array_task")

Status = Literal["running", "done", "failed"]
Who = tuple[Any, ...]  # the values of WHO, in order (None where absent)


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds (records from one worker stay ordered)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def slurm_ids() -> dict[str, str]:
    """The Slurm job, array job and array task ids of this process ({} outside Slurm)."""
    names = {
        "slurm_job": "SLURM_JOB_ID",
        "slurm_array_job": "SLURM_ARRAY_JOB_ID",
        "slurm_array_task": "SLURM_ARRAY_TASK_ID",
    }
    return {key: os.environ[var] for key, var in names.items() if os.environ.get(var)}


def worker_name() -> str:
    """A name unique to this process: Slurm job/task id when there is one, host and pid."""
    ids = slurm_ids()
    job = ids.get("slurm_array_job", ids.get("slurm_job"))
    task = ids.get("slurm_array_task")
    prefix = f"{job}_{task}-" if task else f"{job}-" if job else ""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}"


def header_line(**who: Any) -> str:
    """A journal's header: who writes the records after it (keys of ``WHO``), and when."""
    return json.dumps({**who, "opened": now_iso()}, sort_keys=True) + "\n"


def record_line(unit: str, status: Status, **fields: Any) -> str:
    """One record of a unit, timed now."""
    return json.dumps({"unit": unit, "status": status, "time": now_iso(), **fields}) + "\n"


class Journal:
    """Append-only record file of one worker for one stage (its header written with the
    first record, so a worker with nothing to do leaves no file)."""

    def __init__(self, paths: RunPaths, stage: str, run_id: str) -> None:
        self.run_id = run_id
        self.worker = worker_name()
        self.path = paths.logs / "manifest" / stage / f"{self.worker}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._who = {"run": run_id, "worker": self.worker, "host": socket.gethostname()}
        self._headed = False
        self._published = time.monotonic()

    def record(self, unit: str, status: Status, **fields: Any) -> None:
        """Append one record and make it durable before returning (after a header, first,
        or when the file was removed meanwhile)."""
        line = record_line(unit, status, **fields)
        if not self._headed or not self.path.exists():
            line, self._headed = header_line(**self._who, **slurm_ids()) + line, True
            if _ends_torn(self.path):  # an earlier writer of this name was killed mid-line
                line = "\n" + line  # so the header is not glued to its fragment
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if time.monotonic() - self._published > PUBLISH_EVERY_S:
            self.close()

    def close(self) -> None:
        """Publish the journal (to the bucket of a gs:// run; nothing to do locally)."""
        if self.path.exists():
            publish(self.path)
        self._published = time.monotonic()


def _ends_torn(path: Path) -> bool:
    """Whether the file ends in a line without its newline."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:  # absent or empty
        return False


def read_journal(path: Path) -> list[tuple[Who | None, list[dict[str, Any]]]]:
    """A journal's records in file order, split at its headers: (who wrote them, the
    records); who is None for records written before any header (each names its own)."""
    lines = _parsed_lines(path)
    heads = [i for i, r in enumerate(lines) if "unit" not in r]
    if not heads:
        return [(None, lines)] if lines else []
    parts = [(None, lines[: heads[0]])] if heads[0] else []
    for i, end in zip(heads, [*heads[1:], len(lines)], strict=True):
        parts.append((tuple(map(lines[i].get, WHO)), lines[i + 1 : end]))
    return parts


def journal_records(path: Path) -> list[dict[str, Any]]:
    """A journal's records in file order, each with who wrote it (a header's fields)."""
    return [
        rec if who is None else {**dict(zip(WHO, who, strict=True)), **rec}
        for who, records in read_journal(path)
        for rec in records
    ]


def _parsed_lines(path: Path) -> list[dict[str, Any]]:
    """A journal's lines: parsed as one JSON array (one C-level parse, not one per line);
    line by line only when that fails (a line torn by a worker killed while writing it, or
    a NaN count, which only ``json`` reads)."""
    data = path.read_bytes().rstrip(b"\n")
    try:
        return orjson.loads(b"[" + data.replace(b"\n", b",") + b"]") if data else []
    except orjson.JSONDecodeError:
        lines = []
        for line in data.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

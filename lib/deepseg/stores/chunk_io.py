"""Reading tile stores ahead of the model and writing probability stores behind it.

HDF5 (de)compression is the slow part of a chunk's I/O (tens of MB each way), and h5py
serializes HDF5 calls within a process. So with ``workers`` > 0 the reads and writes run in
that many spawned processes (no CUDA state is forked), which is what keeps a GPU fed; with 0
they run in two threads, enough to overlap a CPU model's compute with the disk. The stores'
arrays travel between the processes in shared memory (``shared_arrays``). At most ``depth``
reads are ahead and ``depth`` writes behind, so memory stays a few chunks.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..core.stopping import exit_with_parent
from .prob_store import ProbStore, read_prob_attrs, write_prob_store
from .shared_arrays import Parcel, SendBuffers, pack, sweep_orphans, unpack
from .tile_store import TileStore, read_tile_store

AUTO_MOST = 12  # I/O processes: a store's read + write + transfer is ~3 ms of CPU per
# tile location (bench/RESULTS.md, null model), so ~10 keep a GPU at 3,500 tiles/s fed


def auto_workers(device_type: str) -> int:
    """Background processes for a device: none on CPU (threads do); on a GPU every core the
    process may use but two (the main process and its transfers), at most ``AUTO_MOST``."""
    if device_type != "cuda":
        return 0
    return max(1, min(AUTO_MOST, len(os.sched_getaffinity(0)) - 2))


def write_and_describe(path: Path, store: ProbStore) -> dict[str, Any]:
    """Write a probability store, then read back what the manifest records of it."""
    write_prob_store(path, store)
    attrs = read_prob_attrs(path)
    return {k: attrs[k] for k in ("valid_box", "threshold", "scales", "merge_method", "classes")}


TILE_ARRAYS = ("pixels", "valid")  # the stores' fields that travel in shared memory
PROB_ARRAYS = ("prob", "hits", "weight")


def read_parcel(path: Path) -> Parcel:
    """Read a tile store in an I/O process; its pixels travel back in shared memory."""
    return pack(read_tile_store(path), TILE_ARRAYS)


def write_parcel(path: Path, parcel: Parcel) -> dict[str, Any]:
    """``write_and_describe`` in an I/O process, of a store sent in shared memory."""
    return write_and_describe(path, unpack(parcel))


class ChunkIO:
    """Background reads and writes of chunk stores (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        self.depth = max(2, workers + 1)
        self._pool: Executor
        self._processes = workers > 0
        self._sent = SendBuffers(keep=self.depth + 1)  # probability stores, to I/O processes
        if self._processes:
            sweep_orphans()  # shared arrays a killed predict left
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                workers, mp_context=context, initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )  # fmt: skip
        else:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="deepseg-io")
        self._fetchers = ThreadPoolExecutor(self.depth, thread_name_prefix="deepseg-fetch")

    def read(self, path: Path, fetch: Callable[[Path], Path]) -> Future[TileStore]:
        """The tile store at ``fetch(path)`` (a gs:// run downloads it there first)."""
        return self._fetchers.submit(self._fetch_and_read, path, fetch)

    def _fetch_and_read(self, path: Path, fetch: Callable[[Path], Path]) -> TileStore:
        if not self._processes:
            return self._pool.submit(read_tile_store, fetch(path)).result()
        return unpack(self._pool.submit(read_parcel, fetch(path)).result())

    def write(self, path: Path, store: ProbStore) -> Future[dict[str, Any]]:
        """Write ``store`` to ``path`` in the background; the future holds what the manifest
        records of it (``write_and_describe``)."""
        if not self._processes:
            return self._pool.submit(write_and_describe, path, store)
        parcel = self._sent.pack(store, PROB_ARRAYS)
        future = self._pool.submit(write_parcel, path, parcel)
        future.add_done_callback(lambda _: self._sent.release(parcel))  # written, or never
        return future

    def __enter__(self) -> ChunkIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fetchers.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sent.close()
        if self._processes:
            sweep_orphans()  # reads finished but never taken (a run stopped by an error)

"""The hand-over of a chunk's two stores between predict's main process and an I/O process.

With ``inference.io_workers`` > 0 every tile store comes back from an I/O process and every
probability store goes to one. Measured here with a real spawned process, as CPU seconds of
each side (``time.process_time``: all of a process's threads, the pool's pipe feeder
included), for the two ways: pickled through the pool's pipe (how ChunkIO did it before),
and ChunkIO's way now (arrays in shared memory, ``stores.shared_arrays``). The main
process's share is what decides the GPU's feed: at 3,500 tile locations/s it has ~0.29 ms
per tile for everything. Used by ``null_model`` (``throughput.py --null-model``).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from deepseg.stores.chunk_io import PROB_ARRAYS, TILE_ARRAYS  # noqa: E402
from deepseg.stores.prob_store import ProbStore  # noqa: E402
from deepseg.stores.shared_arrays import Parcel, SendBuffers, pack, unpack  # noqa: E402
from deepseg.stores.tile_store import TileStore, read_tile_store  # noqa: E402

WAYS = ("pickled", "shared memory")
_cache: dict[Path, TileStore] = {}


def _cpu() -> float:
    return time.process_time()


def _take(store: ProbStore | Parcel) -> int:
    """What an I/O process does with a probability store before writing it: have its pixels."""
    return _touch(unpack(store) if isinstance(store, Parcel) else store, ("prob", "hits"))


def _give(path: Path, shared: bool) -> TileStore | Parcel:
    """A tile store read once, handed back each call (pickled, or as ChunkIO's parcel)."""
    if path not in _cache:
        _cache[path] = read_tile_store(path)
    return pack(_cache[path], TILE_ARRAYS) if shared else _cache[path]


def _touch(store: object, fields: tuple[str, ...]) -> int:
    """Read one byte of every page of the arrays (mapped shared memory is faulted in)."""
    return sum(int(getattr(store, f).reshape(-1).view(np.uint8)[::4096].sum()) for f in fields)


def handover_ms(tile_path: Path, prob: ProbStore, repeat: int = 3) -> dict[str, dict[str, float]]:
    """Per way: ms of CPU per chunk in the main process and in the I/O process to send
    ``prob`` and to receive the tile store at ``tile_path`` (best of ``repeat``)."""
    context = multiprocessing.get_context("spawn")
    out = {}
    buffers = SendBuffers(keep=2)  # as ChunkIO sends: into files it reuses
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(_give, tile_path, False).result()  # start it and read the store, untimed
        for way in WAYS:
            shared = way != "pickled"
            best = (float("inf"), float("inf"))
            for _ in range(repeat):
                main, io = _cpu(), pool.submit(_cpu).result()
                sent = buffers.pack(prob, PROB_ARRAYS) if shared else prob
                pool.submit(_take, sent).result()
                if shared:
                    buffers.release(sent)
                got = pool.submit(_give, tile_path, shared).result()
                _touch(unpack(got) if shared else got, TILE_ARRAYS)
                main, io = _cpu() - main, pool.submit(_cpu).result() - io
                best = min(best, (main, io))
            out[way] = {"main": 1000 * best[0], "io": 1000 * best[1]}
    buffers.close()
    return out

"""Handing a store's large arrays between processes through shared memory, not a pipe.

predict's I/O processes send it every tile store they read (~70 MB for a 16 x 16 tile
chunk) and get every probability store it makes (~95 MB). Pickled through the pool's pipe,
each is copied four times, two of them in the main process, which at 3,500 tiles/s has
~0.3 ms per tile for everything. ``pack`` copies a dataclass's large arrays once into one
file in ``/dev/shm`` and leaves a small picklable ``Parcel``; ``unpack`` maps that file
(no copy), removes its name at once and gives arrays whose memory lives while they do.
A sender that sends many (predict's main process) keeps its files in ``SendBuffers`` and
writes each again once it was read: a new file's pages cost more than the copy.

Where no shared memory can hold the arrays (no ``/dev/shm``, or too little room in it: a
container's is often 64 MB), the parcel carries them itself and they are pickled as before.
A name left by a process killed between ``pack`` and ``unpack`` holds the creator's pid;
``sweep_orphans`` removes those whose creator is gone.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..storage.partials import process_alive

SHM = Path("/dev/shm")
PREFIX = "deepseg-arrays-"
MIN_BYTES = 1 << 20  # smaller parcels are pickled: a pipe is cheaper than a file for them
_ALIGN = 64  # each array starts on a cache line


@dataclass(frozen=True)
class Parcel:
    """A dataclass instance whose fields ``arrays`` name travel in the shared file ``name``
    (``value`` holds empty arrays there); ``name`` None: ``value`` holds them itself.
    ``reused``: the sender writes the file again once told it was read (``SendBuffers``),
    so ``unpack`` leaves its name."""

    value: Any
    name: str | None = None
    arrays: tuple[tuple[str, tuple[int, ...], str, int], ...] = ()  # field, shape, dtype, offset
    reused: bool = False


def _layout(value: Any, fields: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list, int]:
    """The arrays of ``fields`` (None ones left out), where each goes in a file, its size."""
    arrays = {f: getattr(value, f) for f in fields if getattr(value, f) is not None}
    layout, size = [], 0
    for field, array in arrays.items():
        layout.append((field, array.shape, array.dtype.str, size))
        size += -(-array.nbytes // _ALIGN) * _ALIGN
    return arrays, layout, size


def _fill(mapped: mmap.mmap, value: Any, arrays: dict, layout: list, name: str) -> Parcel:
    """Copy ``arrays`` into ``mapped`` at their ``layout`` offsets; the parcel of ``value``."""
    for field, shape, dtype, offset in layout:
        view = np.frombuffer(mapped, dtype, int(np.prod(shape)), offset).reshape(shape)
        view[...] = arrays[field]
        del view  # a mapping closes only once no array points into it
    emptied = {f: np.empty((0,) * a.ndim, a.dtype) for f, a in arrays.items()}
    return Parcel(dataclasses.replace(value, **emptied), name, tuple(layout))


def _new_name() -> str:
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def pack(value: Any, fields: tuple[str, ...]) -> Parcel:
    """A parcel of the dataclass ``value``, its numpy array ``fields`` (None ones skipped)
    copied into a new shared file; ``Parcel(value)`` when shared memory cannot take them."""
    arrays, layout, size = _layout(value, fields)
    name = _new_name()
    mapped = _create(SHM / name, size) if size >= MIN_BYTES else None
    if mapped is None:
        return Parcel(value)
    with mapped:
        return _fill(mapped, value, arrays, layout, name)


def unpack(parcel: Parcel) -> Any:
    """The dataclass a parcel carries, its arrays mapped from the shared file (whose name is
    removed now, unless ``reused``: the memory is freed when the last of these arrays is)."""
    if parcel.name is None:
        return parcel.value
    path = SHM / parcel.name
    fd = os.open(path, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
        if not parcel.reused:
            path.unlink()
    arrays = {
        field: np.frombuffer(mapped, dtype, int(np.prod(shape)), offset).reshape(shape)
        for field, shape, dtype, offset in parcel.arrays
    }
    return dataclasses.replace(parcel.value, **arrays)


class SendBuffers:
    """Shared files one process sends parcels in and writes again once each was read:
    a new file costs ~0.5 ms per MB (its pages reserved, zeroed and faulted in), a reused
    one only the copy. At most ``keep`` idle files are kept; ``close`` removes them all.
    Thread-safe (``release`` runs in a pool's callback thread)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[tuple[str, mmap.mmap]] = []
        self._busy: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def pack(self, value: Any, fields: tuple[str, ...]) -> Parcel:
        """As ``pack``, into an idle file that is big enough when there is one."""
        arrays, layout, size = _layout(value, fields)
        if size < MIN_BYTES:
            return Parcel(value)
        with self._lock:
            fits = [i for i, (_, m) in enumerate(self._idle) if len(m) >= size]
            name, mapped = self._idle.pop(fits[0]) if fits else (_new_name(), None)
        if mapped is None and (mapped := _create(SHM / name, size)) is None:
            return Parcel(value)
        with self._lock:
            self._busy[name] = mapped
        return dataclasses.replace(_fill(mapped, value, arrays, layout, name), reused=True)

    def release(self, parcel: Parcel) -> None:
        """The receiver is done with ``parcel`` (or will never read it): reuse its file."""
        with self._lock:
            mapped = self._busy.pop(parcel.name, None) if parcel.name else None
            if mapped is not None and len(self._idle) < self.keep:
                self._idle.append((parcel.name, mapped))
                return
        if mapped is not None:
            _remove(parcel.name, mapped)

    def close(self) -> None:
        """Remove every file (the receivers have what they read mapped still)."""
        with self._lock:
            files, self._idle = [*self._idle, *self._busy.items()], []
            self._busy.clear()
        for name, mapped in files:
            _remove(name, mapped)


def _remove(name: str, mapped: mmap.mmap) -> None:
    mapped.close()
    (SHM / name).unlink(missing_ok=True)


def sweep_orphans() -> int:
    """Remove shared files whose creating process is gone (killed between pack and unpack);
    returns how many. Only names with this host's pid namespace's dead pids are touched."""
    removed = 0
    for path in SHM.glob(f"{PREFIX}*") if SHM.is_dir() else ():
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _create(path: Path, size: int) -> mmap.mmap | None:
    """A writable mapping of a new shared file of ``size`` bytes with its space reserved
    (so a full ``/dev/shm`` fails here, not with SIGBUS on first write); None if it cannot."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)

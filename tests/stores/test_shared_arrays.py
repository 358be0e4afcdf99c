"""Stores' arrays through shared memory: equal arrays back, a small pickle, no file left
behind (taken, discarded or orphaned by a dead process), the pipe where no room is."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from deepseg.stores import shared_arrays
from deepseg.stores.shared_arrays import Parcel, SendBuffers, pack, sweep_orphans, unpack

pytestmark = pytest.mark.skipif(not shared_arrays.SHM.is_dir(), reason="no /dev/shm here")


@dataclass(frozen=True)
class Arrays:
    name: str
    big: np.ndarray
    mask: np.ndarray
    extra: np.ndarray | None = None


def example() -> Arrays:
    rng = np.random.default_rng(4)
    big = rng.random((3, 301, 517), dtype=np.float32)  # odd sizes: offsets past alignment
    return Arrays("c1", big, big[0] > 0.5, np.arange(7, dtype=np.int64))


def packed_in_a_child() -> Parcel:
    return pack(example(), ("big", "mask", "extra"))


def _ours() -> set[str]:
    return {p.name for p in shared_arrays.SHM.glob(f"{shared_arrays.PREFIX}*")}


def test_arrays_come_back_equal_and_writable_and_the_file_goes():
    before, value = _ours(), example()
    parcel = pack(value, ("big", "mask", "extra"))
    assert parcel.name is not None and parcel.value.big.size == 0
    assert len(pickle.dumps(parcel)) < 4096  # the pipe carries the names, not the pixels
    assert _ours() == before | {parcel.name}
    back = unpack(pickle.loads(pickle.dumps(parcel)))
    assert _ours() == before  # removed as soon as it is mapped
    assert back.name == "c1" and back.big.dtype == np.float32 and back.mask.dtype == bool
    np.testing.assert_array_equal(back.big, value.big)
    np.testing.assert_array_equal(back.mask, value.mask)
    np.testing.assert_array_equal(back.extra, value.extra)
    back.big[0, 0, 0] = -1.0  # the receiver may write into them
    assert back.big[0, 0, 0] == -1.0


def test_a_spawned_process_sends_its_arrays_in_shared_memory():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        parcel = pool.submit(packed_in_a_child).result()
    assert parcel.name is not None
    back = unpack(parcel)
    np.testing.assert_array_equal(back.big, example().big)
    assert parcel.name not in _ours()


def test_none_fields_small_parcels_and_no_room_go_through_the_pipe(tmp_path, monkeypatch):
    value = example()
    small = Arrays("c2", np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))
    assert pack(small, ("big", "mask", "extra")) == Parcel(small)  # under MIN_BYTES
    parcel = pack(Arrays("c3", value.big, value.mask), ("big", "mask", "extra"))
    assert [a[0] for a in parcel.arrays] == ["big", "mask"]  # extra is None: left as it is
    assert unpack(pickle.loads(pickle.dumps(parcel))).extra is None
    monkeypatch.setattr(shared_arrays, "SHM", tmp_path / "no-shm-here")
    assert pack(value, ("big",)) == Parcel(value)  # no shared memory: the value itself
    assert unpack(Parcel(value)) is value


def test_orphans_of_dead_processes_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(shared_arrays, "SHM", tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = tmp_path / f"{shared_arrays.PREFIX}{dead}-abc"
    orphan.write_bytes(b"x")
    live = pack(example(), ("big",))
    other = tmp_path / "deepseg-something-else"
    other.write_bytes(b"y")
    assert sweep_orphans() == 1
    assert not orphan.exists() and (tmp_path / live.name).exists() and other.exists()
    np.testing.assert_array_equal(unpack(live).big, example().big)


def test_send_buffers_write_a_file_again_once_it_was_read():
    before, value = _ours(), example()
    buffers = SendBuffers(keep=1)
    first = buffers.pack(value, ("big", "mask"))
    np.testing.assert_array_equal(unpack(first).big, value.big)
    assert first.reused and first.name in _ours()  # the receiver leaves the name
    buffers.release(first)
    other = dataclasses.replace(value, big=value.big[::-1].copy())
    second = buffers.pack(other, ("big", "mask"))
    assert second.name == first.name  # the same file, written again
    third = buffers.pack(value, ("big", "mask"))  # while the second is unread: a new one
    assert third.name != second.name
    np.testing.assert_array_equal(unpack(second).big, other.big)
    np.testing.assert_array_equal(unpack(third).big, value.big)
    bigger = Arrays("c4", np.ones((2, 900, 900), np.float32), value.mask)
    buffers.release(second)
    buffers.release(third)  # over ``keep``: removed
    assert _ours() == before | {second.name}
    fourth = buffers.pack(bigger, ("big",))  # the idle file is too small: a new one
    assert fourth.name != second.name
    np.testing.assert_array_equal(unpack(fourth).big, bigger.big)
    buffers.close()
    assert _ours() == before

"""ISA-L deflated chunk writes: the same values as HDF5's own writes, stored as ISA-L wrote
them, read by plain HDF5 (h5py's filters), in any window, type and chunking."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from isal import isal_zlib

from deepseg.formats.deflate import deflate_level, write_array

GZIP = dict(compression="gzip", compression_opts=1)


def _pair(tmp_path, shape, dtype, chunks, fill=0, **filters):
    a = h5py.File(tmp_path / "hdf5.h5", "w")
    b = h5py.File(tmp_path / "isal.h5", "w")
    make = dict(shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, **filters)
    return a, b, a.create_dataset("x", **make), b.create_dataset("x", **make)


@pytest.mark.parametrize("dtype", ["u1", "<f4", "<i2", "<f8"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_windows_written_by_isal_equal_hdf5s_own_writes(tmp_path, dtype, shuffle):
    rng = np.random.default_rng([ord(c) for c in dtype] + [shuffle])
    shape, chunks = (203, 157), (32, 40)  # edge chunks cut by the dataset's border
    a, b, da, db = _pair(tmp_path, shape, dtype, chunks, fill=7, shuffle=shuffle, **GZIP)
    with a, b:
        for _ in range(12):  # overlapping windows: aligned, off-chunk, single pixels, whole
            r0, c0 = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
            h = int(rng.integers(1, shape[0] - r0 + 1))
            w = int(rng.integers(1, shape[1] - c0 + 1))
            values = (rng.random((h, w)) * 100).astype(dtype)
            da[r0 : r0 + h, c0 : c0 + w] = values
            write_array(db, values, r0, c0)
        whole = (rng.random(shape) * 100).astype(dtype)[:64, :80]
        da[:64, :80] = whole
        write_array(db, whole)
        np.testing.assert_array_equal(db[()], da[()])


def test_a_whole_chunk_is_stored_as_isal_deflated_it(tmp_path):
    """The fast path is taken: the stored bytes of a fully covered chunk, and of an edge chunk
    (padded with the fill value), are ISA-L's stream of the shuffled chunk."""
    values = np.linspace(0, 1, 100 * 90, dtype=np.float32).reshape(100, 90)
    a, b, _, db = _pair(tmp_path, (100, 90), "<f4", (64, 64), fill=-1, shuffle=True, **GZIP)
    with a, b:
        write_array(db, values)
        for (r, c), part in (((0, 0), values[:64, :64]), ((64, 64), values[64:, 64:])):
            block = np.full((64, 64), -1, np.float32)
            block[: part.shape[0], : part.shape[1]] = part
            shuffled = np.ascontiguousarray(block.view(np.uint8).reshape(-1, 4).T)
            mask, stored = db.id.read_direct_chunk((r, c))
            assert mask == 0 and stored == isal_zlib.compress(shuffled, 1)
        np.testing.assert_array_equal(db[()], values)


@pytest.mark.parametrize(
    "filters",
    [dict(compression="lzf"), dict(fletcher32=True, **GZIP), dict(scaleoffset=0, **GZIP), {}],
    ids=["lzf", "fletcher32", "scaleoffset", "none"],
)
def test_other_filter_pipelines_are_written_by_hdf5(tmp_path, filters):
    values = np.arange(50 * 70, dtype=np.int16).reshape(50, 70)
    a, b, _, db = _pair(tmp_path, (80, 90), "<i2", (16, 16), **filters)
    with a, b:
        assert deflate_level(db) is None
        write_array(db, values, 3, 5)
        np.testing.assert_array_equal(db[3:53, 5:75], values)
        assert not db[:3].any() and not db[:, :5].any()


def test_deflate_level_reads_the_datasets_level(tmp_path):
    with h5py.File(tmp_path / "l.h5", "w") as f:
        assert deflate_level(f.create_dataset("a", (8, 8), "f4", chunks=(4, 4), **GZIP)) == 1
        ds = f.create_dataset("b", (8, 8), "u1", chunks=(4, 4), compression=6, shuffle=True)
        assert deflate_level(ds) == 6
        assert deflate_level(f.create_dataset("c", (8, 8), "u1")) is None  # contiguous

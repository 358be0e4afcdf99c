"""The inference engine's rules with exact expectations: scale geometry, sinusoidal merge,
NaN input, clipping, out-of-memory back-off, background I/O."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch

from conftest import (
    MEAN,
    STD,
    Pointwise,
    assert_same_probability,
    lattice_transform,
    reference_probability,
    write_experiment,
    write_model,
    write_raster,
)
from deepseg.config import load_experiment
from deepseg.model import card as model_module
from deepseg.model.overlap import sin2_window
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import RunPaths
from deepseg.stores.shared_arrays import MIN_BYTES

AT = (64 * 30 + 16, 64 * 40 + 32)  # grid (col, row) of the rasters' pixel (0, 0)


class FirstChannel(torch.nn.Module):
    """logit = the normalized first input channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1]


class Ramp(torch.nn.Module):
    """Not flip-invariant, and not the same in two overlapping tiles: logit = channel 0
    + 2 * col / W - 3 * row / H (tile pixel coordinates)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        cols = torch.arange(w, dtype=x.dtype) / w
        rows = torch.arange(h, dtype=x.dtype) / h
        return x[:, 0:1] + 2 * cols[None, None, None, :] - 3 * rows[None, None, :, None]


def run(folder: Path, data: np.ndarray, model: Path, nodata=0, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raster = write_raster(folder / "scene.tif", data, lattice_transform(*AT), nodata=nodata)
    exp = load_experiment(write_experiment(folder, [raster], model, **sections))
    for stage in (create_tiles, predict, merge):
        stage(exp)
    with rasterio.open(folder / "out" / "merged" / "all_prob.tif") as src:
        assert src.transform == lattice_transform(*AT)  # the merged raster starts at the input
        return src.read(1)


def coarse_then_bilinear(h: int, w: int, factor: int, logit_at) -> np.ndarray:
    """The spec's scale rule for a linear ramp, computed independently: the context is
    downsampled ``factor`` times (bilinear reproduces a ramp exactly, so coarse pixel k of an
    axis holds the ramp at fine position (k + 0.5) * factor - 0.5), predicted there, and the
    probabilities interpolated bilinearly back at fine pixel centres. Every tile's coarse
    lattice starts at a multiple of ``factor`` (tiles and halo are multiples of 16 px)."""

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        q = (np.arange(n) + 0.5) / factor - 0.5  # fine pixel centre, coarse coordinates
        k = np.floor(q).astype(int)
        return k, q - k

    (kr, tr), (kc, tc) = axis(h), axis(w)
    fine = lambda k: (k + 0.5) * factor - 0.5  # noqa: E731 - coarse index -> fine position

    def prob(kr_, kc_):
        z = logit_at(fine(kr_)[:, None], fine(kc_)[None, :])
        return 1 / (1 + np.exp(-z))

    tr, tc = tr[:, None], tc[None, :]
    return (
        (1 - tr) * (1 - tc) * prob(kr, kc)
        + (1 - tr) * tc * prob(kr, kc + 1)
        + tr * (1 - tc) * prob(kr + 1, kc)
        + tr * tc * prob(kr + 1, kc + 1)
    )


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_scale_crop_and_resample_geometry(tmp_path, scale):
    """A model returning its first channel on a linear ramp: wherever a tile's whole context
    lies on valid pixels, the output must be the spec's crop - downsample - predict - upsample -
    centre, computed independently above; a context off by one pixel shifts it by a ramp step
    (0.01 logit per column here, 20x the tolerance)."""
    h, w = 300, 320
    rows, cols = np.mgrid[0:h, 0:w]
    ramp = (0.5 * cols - 0.3 * rows + 60).astype(np.float32)  # band 1, raw units
    data = np.stack([ramp, np.full_like(ramp, MEAN[1]), np.full_like(ramp, MEAN[2])])
    model = write_model(tmp_path / "m", FirstChannel())
    grid = {"tile_size": 32, "stride": 16, "chunk_tiles": 3}
    prob = run(tmp_path, data, model, nodata=None, grid=grid, inference={"scales": [scale]})
    factor = round(1 / scale)
    expected = coarse_then_bilinear(
        h, w, factor, lambda r, c: (0.5 * c - 0.3 * r + 60 - MEAN[0]) / STD[0]
    )
    margin = 16 + round(32 / scale)  # a tile's context reaches this far beyond the raster
    inner = (slice(margin, h - margin), slice(margin, w - margin))
    np.testing.assert_allclose(prob[inner], expected[inner], rtol=0, atol=1e-6)
    shifted = coarse_then_bilinear(  # the same with the context one column off
        h, w, factor, lambda r, c: (0.5 * (c + 1) - 0.3 * r + 60 - MEAN[0]) / STD[0]
    )
    assert np.abs(prob[inner] - shifted[inner]).min() > 2e-5


def test_scales_fuse_by_maximum_and_record_their_bits(tmp_path):
    h, w = 200, 200
    data = np.random.default_rng(4).integers(1, 255, size=(3, h, w), dtype=np.uint8)
    model = write_model(tmp_path / "m")
    grid = {"tile_size": 32, "stride": 16, "chunk_tiles": 2}
    inference = {"scales": [1.0, 0.5]}
    prob = run(
        tmp_path, data, model, grid=grid, inference=inference, merge={"products": ["scales"]}
    )
    single = run(tmp_path / "one", data, model, grid=grid)
    half = run(tmp_path / "half", data, model, grid=grid, inference={"scales": [0.5]})
    assert np.array_equal(prob, np.maximum(single, half))  # fused = max of per-scale runs
    with rasterio.open(tmp_path / "out" / "merged" / "all_scales.tif") as src:
        bits = src.read(1)
    assert ((bits & 1) == (single >= 0.5)).all()  # bit 0: scale 1.0 reached the threshold
    assert (((bits >> 1) & 1) == (half >= 0.5)).all()  # bit 1: scale 0.5 did
    assert ((bits > 0) == (prob >= 0.5)).all()  # some scale reached it = the fused map did


def test_sinusoidal_window_sums_to_one_at_half_stride():
    w = sin2_window(64, torch.device("cpu")).double()
    total = w[:32, :32] + w[32:, :32] + w[:32, 32:] + w[32:, 32:]
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-6)
    assert float(w.min()) > 0  # never zero: the raster's edge divides by a positive weight


def test_sinusoidal_merge_equals_whole_grid_weighted_mean_for_any_chunking(tmp_path):
    """Tiles disagree (Ramp model); the merged map must be sum(w p) / sum(w) over every tile
    of the global lattice covering a pixel, however the tiles are grouped into chunks."""
    h, w, tile, stride = 150, 170, 32, 16
    data = np.random.default_rng(8).integers(1, 255, size=(3, h, w), dtype=np.uint8)
    model = write_model(tmp_path / "m", Ramp())
    results = [
        run(
            tmp_path / f"k{k}",
            data,
            model,
            grid={"tile_size": tile, "stride": stride, "chunk_tiles": k},
            merge={"method": "sinusoidal"},
        )
        for k in (1, 3)
    ]
    x = (data.astype(np.float32) - np.array(MEAN, np.float32)[:, None, None]) / np.array(
        STD, np.float32
    )[:, None, None]
    win = sin2_window(tile, torch.device("cpu")).double().numpy()
    ramp = 2 * np.arange(tile)[None, :] / tile - 3 * np.arange(tile)[:, None] / tile
    num, den = np.zeros((h, w)), np.zeros((h, w))
    c0, r0 = AT[0] % stride, AT[1] % stride  # raster px (0, 0) within its stride cell
    for top in range(-r0 - tile + stride, h, stride):
        for left in range(-c0 - tile + stride, w, stride):
            rs = slice(max(top, 0), min(top + tile, h))
            cs = slice(max(left, 0), min(left + tile, w))
            patch = np.zeros((tile, tile))
            patch[rs.start - top : rs.stop - top, cs.start - left : cs.stop - left] = x[0, rs, cs]
            p = 1 / (1 + np.exp(-(patch + ramp)))
            sub = (slice(rs.start - top, rs.stop - top), slice(cs.start - left, cs.stop - left))
            num[rs, cs] += (win * p)[sub]
            den[rs, cs] += win[sub]
    expected = num / den
    for prob in results:
        np.testing.assert_allclose(prob, expected, rtol=0, atol=2e-6)


def test_sinusoidal_with_a_pointwise_model_equals_whole_image(tmp_path, model_dir):
    data = np.random.default_rng(9).integers(1, 255, size=(3, 130, 150), dtype=np.uint8)
    data[:, :30, :40] = 0  # nodata corner: the edge of valid data needs no special case
    prob = run(tmp_path, data, model_dir, merge={"method": "sinusoidal"})
    expected = reference_probability(data, (data != 0).any(axis=0))
    rows, cols = np.nonzero(expected != -1)
    expected = expected[rows.min() :, cols.min() :][: prob.shape[0], : prob.shape[1]]
    np.testing.assert_array_equal(prob == -1, expected == -1)
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-6)


def test_nan_input_pixels_are_nodata_and_do_not_spread(tmp_path, model_dir):
    data = np.random.default_rng(1).uniform(1, 255, size=(3, 120, 140)).astype(np.float32)
    data[1, 50:53, 60:64] = np.nan
    prob = run(tmp_path, data, model_dir, nodata=None)
    valid = ~np.isnan(data).any(axis=0)
    assert_same_probability(prob, reference_probability(np.nan_to_num(data), valid))


class NanWhereBright(torch.nn.Module):
    """The pointwise model, but NaN where band 1 is above its mean + 2 std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x[:, 0:1] * 1.5 - x[:, 1:2] * 0.5 + x[:, 2:3] * 0.25 + 0.1) * 2.0
        return torch.where(x[:, 0:1] > 2.0, torch.full_like(logit, float("nan")), logit)


def test_out_of_range_predictions_are_clipped_and_logged(tmp_path, caplog):
    data = np.random.default_rng(2).integers(1, 255, size=(3, 100, 100), dtype=np.uint8)
    with caplog.at_level(logging.ERROR, logger="deepseg"):
        prob = run(tmp_path, data, write_model(tmp_path / "m", NanWhereBright()))
    assert ((prob >= 0) & (prob <= 1)).all()
    assert any("outside [0, 1] or NaN, clipped" in r.message for r in caplog.records)
    log = (RunPaths(tmp_path / "out").logs / "inference_log.json").read_text()
    assert '"values_clipped": 0' not in log


class OutOfMemoryAboveTwo(torch.nn.Module):
    """The pointwise model, but a CUDA out-of-memory error for batches above 2 tiles."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: no GPU here)")
        return Pointwise()(x)


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, model_dir, monkeypatch, caplog):
    data = np.random.default_rng(3).integers(1, 255, size=(3, 100, 100), dtype=np.uint8)
    expected = run(tmp_path / "plain", data, model_dir)
    monkeypatch.setitem(
        model_module.FRAMEWORKS, "torchscript", lambda weights, cfg: OutOfMemoryAboveTwo()
    )
    with caplog.at_level(logging.WARNING, logger="deepseg"):
        prob = run(tmp_path / "oom", data, model_dir, inference={"batch_size": 8})
    assert_same_probability(prob, expected)
    lowered = [r.message for r in caplog.records if "batch size lowered" in r.message]
    assert [m.split("lowered to ")[1].split()[0] for m in lowered] == ["4", "2"]


@pytest.mark.parametrize(
    "size, grid",
    [((140, 150), {}), ((700, 650), {"tile_size": 256, "stride": 128, "chunk_tiles": 4})],
    ids=["pickled", "shared-memory"],  # stores under / over shared_arrays.MIN_BYTES
)
def test_background_processes_write_the_same_stores(tmp_path, model_dir, size, grid):
    data = np.random.default_rng(6).integers(1, 255, size=(3, *size), dtype=np.uint8)
    stores = {}
    for workers in (0, 2):
        folder = tmp_path / f"w{workers}"
        run(folder, data, model_dir, inference={"io_workers": workers}, grid=grid)
        paths = RunPaths(folder / "out")
        stores[workers] = {p.name: p.read_bytes() for p in paths.prob_stores()}
    assert stores[0] == stores[2] and len(stores[0]) >= 4
    with h5py.File(max(RunPaths(tmp_path / "w2" / "out").prob_stores())) as f:
        sizes = []
        f.visititems(lambda _, obj: sizes.append(getattr(obj, "nbytes", 0)))
    assert (sum(sizes) > MIN_BYTES) == bool(grid)  # the arrays a chunk's store sends back

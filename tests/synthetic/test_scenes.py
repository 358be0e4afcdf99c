"""The synthetic scene generator: deterministic, real slump sizes, look-alikes, nodata."""

from __future__ import annotations

import hashlib
from statistics import NormalDist

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize

from deepseg.synthetic.scenes import render_scene
from deepseg.synthetic.shapes import (
    SLUMP_AREA_RANGE_PX,
    SLUMP_LOG_SIGMA,
    SLUMP_MEDIAN_PX,
    sample_slump_areas,
)


def digest(scene) -> tuple[str, list[bytes], list[bytes]]:
    return (
        hashlib.sha256(scene.pixels.tobytes()).hexdigest(),
        shapely.to_wkb(scene.slumps).tolist(),
        shapely.to_wkb([p for _, p in scene.lookalikes]).tolist(),
    )


def test_same_seed_same_scene() -> None:
    a, b = render_scene(512, 384, 3), render_scene(512, 384, 3)
    assert digest(a) == digest(b)
    assert not np.array_equal(a.pixels, render_scene(512, 384, 4).pixels)


def test_slump_areas_follow_the_real_distribution() -> None:
    """Median ~700 px and 5 % under ~80 px (3 m pixels), as measured on real RTS labels."""
    areas = sample_slump_areas(np.random.default_rng(0), 200_000)
    assert np.median(areas) == pytest.approx(700, rel=0.02)
    assert np.percentile(areas, 5) == pytest.approx(80, rel=0.05)
    # independently: the quantiles of the log-normal truncated to SLUMP_AREA_RANGE_PX
    unit = NormalDist()
    lo, hi = (unit.cdf(np.log(a / SLUMP_MEDIAN_PX) / SLUMP_LOG_SIGMA) for a in SLUMP_AREA_RANGE_PX)
    for q in (5, 50, 95):
        z = unit.inv_cdf(lo + q / 100 * (hi - lo))
        expected = SLUMP_MEDIAN_PX * np.exp(SLUMP_LOG_SIGMA * z)
        assert np.percentile(areas, q) == pytest.approx(expected, rel=0.02)
    assert areas.min() >= SLUMP_AREA_RANGE_PX[0] and areas.max() <= SLUMP_AREA_RANGE_PX[1]


@pytest.fixture(scope="module")
def scene():
    return render_scene(2048, 2048, 11, giants=1, roads=2)


def test_painted_slumps_have_the_sampled_sizes(scene) -> None:
    areas = np.array([p.area for p in scene.slumps])
    regular = areas[areas < 40_000]
    assert len(regular) >= 15
    assert 300 < np.median(regular) < 1600
    widths = [np.ptp(np.asarray(p.exterior.coords), axis=0).max() for p in scene.slumps]
    assert sum(w > 512 for w in widths) == 1  # the giant, longer than a 512 px tile


def test_features_do_not_overlap_and_stay_off_nodata(scene) -> None:
    slumps = shapely.union_all(scene.slumps)
    assert sum(p.area for p in scene.slumps) == pytest.approx(slumps.area)
    assert not any(p.intersects(slumps) for _, p in scene.lookalikes)
    valid = shapely.box(0, 0, 2048 - 40, 2048)
    assert all(valid.contains(p) for p in scene.slumps)
    assert not scene.pixels[:, :, -40:].any()
    assert scene.pixels[:, :, :-40].min() >= 1


def test_lookalikes_are_as_bright_as_slump_floors(scene) -> None:
    """River bars, roads and gravel pads: bright bare ground a threshold cannot tell apart."""
    kinds = {kind for kind, _ in scene.lookalikes}
    assert kinds == {"river_bar", "road", "gravel_pad"}
    shape = scene.pixels.shape[1:]
    brightness = scene.pixels.mean(axis=0)
    slump = rasterize(scene.slumps, out_shape=shape, transform=Affine.identity()) > 0
    alike = rasterize([p for _, p in scene.lookalikes], out_shape=shape) > 0
    floor = np.percentile(brightness[slump], [25, 75])
    assert floor[0] < np.median(brightness[alike]) < floor[1] + 25
    # and both stand out from the tundra: ~98.7 % of other pixels are darker than the floors
    other = ~slump & ~alike & scene.pixels.any(axis=0)
    assert np.mean(brightness[other] < floor[0]) > 0.98

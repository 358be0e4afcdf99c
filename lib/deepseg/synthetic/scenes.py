"""Synthetic Arctic scenes with retrogressive thaw slumps (RTS) and their look-alikes.

``render_scene`` paints a seeded 3 m RGB scene (uint8, 0 = nodata) in pixel space: tundra
(green/brown mix, hillshade from a smooth elevation field, ice-wedge polygon troughs), a
meandering river, lakes and ponds, and then

- slumps: a bright, streaked bare floor (flow lines from the headwall to the mouth, wetter and
  darker towards the mouth) inside a dark arcuate headwall band on the upslope side. Footprint
  areas follow the real distribution at 3 m (log-normal, median ``SLUMP_MEDIAN_PX`` ~700 px,
  5 % under ~80 px); ``giants`` extra slumps are wider than 512 px, longer than a tile;
- look-alikes a good model must not flag: bare river bars (smooth sand on the channel edge),
  gravel roads and gravel pads, as bright as slump floors but without headwall or flow lines;
- cloud shadows darkening everything under them, and a strip of ``nodata_cols`` nodata
  columns on the right.

Polygons are in pixel-corner coordinates (x = column, y = row). The same seed gives the same
pixels and polygons (byte for byte with the same numpy and GDAL builds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely import LineString, Polygon

from .shapes import Blob, make_blob, sample_slump_areas, smooth_noise, window_mask

SLUMPS_PER_MPX = 4.5  # slumps per million valid pixels (many more than in nature: a demo)
GIANT_LENGTH_PX = (530.0, 600.0)  # long axis of the giants, px
TUNDRA_GREEN = np.array([78, 96, 58], dtype=np.float32)
TUNDRA_BROWN = np.array([104, 94, 68], dtype=np.float32)
WATER = np.array([28, 38, 50], dtype=np.float32)
HEADWALL = np.array([66, 56, 46], dtype=np.float32)
FLOOR = np.array([160, 150, 134], dtype=np.float32)
SAND = np.array([172, 164, 140], dtype=np.float32)
GRAVEL = np.array([170, 167, 158], dtype=np.float32)


@dataclass(frozen=True)
class Scene:
    """A rendered scene: pixels (3, H, W) uint8 (0 = nodata), slump footprints and look-alikes
    (kind, footprint) with kind one of ``river_bar``, ``road``, ``gravel_pad``."""

    pixels: np.ndarray
    slumps: list[Polygon]
    lookalikes: list[tuple[str, Polygon]]


def _terrain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tundra (3, H, W) float32, 0-255 units: vegetation mix, hillshade, ice-wedge troughs."""
    mix = np.clip(0.5 + 0.35 * smooth_noise(rng, height, width, 192), 0, 1)
    elevation = smooth_noise(rng, height, width, 300) + 0.3 * smooth_noise(rng, height, width, 70)
    gy, gx = np.gradient(elevation)
    relief = gx + gy  # slopes facing the sun in the north-west are brighter
    shade = 1 + np.clip(0.12 * relief / (relief.std() + 1e-6), -0.25, 0.25)
    del elevation, gx, gy, relief
    patterned = smooth_noise(rng, height, width, 400) > 0.1
    troughs = patterned & (np.abs(smooth_noise(rng, height, width, 9)) < 0.08)
    texture = 5 * smooth_noise(rng, height, width, 24) + 3 * smooth_noise(rng, height, width, 4)
    texture -= 9 * troughs
    img = np.empty((3, height, width), dtype=np.float32)
    for b in range(3):  # band by band, in place, to keep memory to a few full-size arrays
        np.multiply(mix, TUNDRA_BROWN[b] - TUNDRA_GREEN[b], out=img[b])
        img[b] += TUNDRA_GREEN[b] + texture + 3 * rng.standard_normal((height, width), np.float32)
        img[b] *= shade
    return img


def _river(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row of the river's centre line and its half width, px, for every column."""
    x = np.arange(width)
    phase = rng.uniform(0, 2 * np.pi, 2)
    centre = height * (0.72 + 0.08 * np.sin(2 * np.pi * x / (0.9 * width) + phase[0]))
    centre += 14 * np.sin(2 * np.pi * x / 230 + phase[1])
    return centre, 6 + 2 * np.sin(x / 97.0)


class _Layout:
    """Free space for new features: a mask of what is taken (water, roads, bars, slumps)."""

    def __init__(self, shape: tuple[int, int], valid_cols: int) -> None:
        self.shape, self.valid_cols = shape, valid_cols
        self.taken = np.zeros(shape, dtype=bool)

    def fits(self, blob: Blob, margin_px: float) -> bool:
        """True when the blob plus ``margin_px`` lies inside the valid area on free ground."""
        reach = max(blob.a, blob.b) * float(blob.factor.max()) + margin_px
        if not (
            reach < blob.cx < self.valid_cols - reach and reach < blob.cy < self.shape[0] - reach
        ):
            return False
        rs, cs = blob.box(self.shape, margin_px)
        rho, _ = blob.polar(np.arange(rs.start, rs.stop)[:, None], np.arange(cs.start, cs.stop))
        near = (rho - 1) * np.sqrt(blob.a * blob.b) < margin_px
        return not self.taken[rs, cs][near].any()

    def take(self, window: tuple[slice, slice], mask: np.ndarray) -> None:
        """Mark ``mask`` (the pixels of ``window``) as taken."""
        self.taken[window] |= mask


def _place_lookalikes(
    rng: np.random.Generator, img: np.ndarray, layout: _Layout, river: tuple, roads: int
) -> list[tuple[str, Polygon]]:
    """Paint river bars, roads and gravel pads into ``img``; return (kind, footprint)."""
    height, width = layout.shape
    found = [("river_bar", _river_bar(rng, layout, *river)) for _ in range(3 * (width // 800 + 1))]
    for _ in range(roads):
        ends = rng.uniform(0.1, 0.9, 4) * [width, height, width, height]
        start, stop = (0.0, ends[1]), (layout.valid_cols, ends[3])
        t = np.linspace(0, 1, 64)[:, None]
        points = (1 - t) ** 2 * start + 2 * t * (1 - t) * ends[[0, 2]] + t**2 * stop
        found.append(("road", LineString(points).buffer(rng.uniform(2, 3.5), cap_style="flat")))
        pad = _gravel_pad(rng, layout, points)
        if pad is not None:
            found.append(("gravel_pad", pad))
    for kind, poly in found:
        (rs, cs), mask = window_mask(poly, layout.shape)
        colour = (SAND if kind == "river_bar" else GRAVEL) + rng.normal(0, 8) + rng.normal(0, 4, 3)
        img[:, rs, cs][:, mask] = colour[:, None] + rng.normal(0, 4, (3, int(mask.sum())))
        layout.take((rs, cs), mask)
    return found


def _gravel_pad(rng: np.random.Generator, layout: _Layout, road: np.ndarray) -> Polygon | None:
    """A rectangle 24-60 px a side beside the road (N x 2 points), on free ground, if any."""
    for k in rng.permutation(np.arange(8, len(road) - 8)):
        theta = np.arctan2(*(road[k + 1] - road[k])[::-1])
        half_w, half_h = rng.uniform(12, 30, 2)
        cx, cy = road[k] + np.array([-np.sin(theta), np.cos(theta)]) * (half_h + 3)
        c, s = np.cos(theta), np.sin(theta)
        corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        pad = Polygon([(cx + c * u - s * v, cy + s * u + c * v) for u, v in corners])
        (rs, cs), mask = window_mask(pad, layout.shape)
        if mask.any() and not layout.taken[rs, cs][mask].any():
            return pad
    return None


def _river_bar(
    rng: np.random.Generator, layout: _Layout, centre: np.ndarray, half: np.ndarray
) -> Polygon:
    """A bare bar along one bank: from the water's edge out to a lens-shaped outer edge."""
    length, bar_w = min(rng.uniform(60, 240), 0.8 * layout.valid_cols), rng.uniform(8, 28)
    x0 = rng.uniform(0, layout.valid_cols - length)
    xs = np.linspace(x0, x0 + length, 48)
    side = rng.choice([-1.0, 1.0])
    edge = np.interp(xs, np.arange(centre.size), centre + side * (half - 2))
    lens = bar_w * np.sin(np.linspace(0, np.pi, xs.size)) ** 0.7
    return Polygon(np.concatenate([np.c_[xs, edge], np.c_[xs, edge + side * lens][::-1]]))


def _slump_blobs(
    rng: np.random.Generator, layout: _Layout, n_slumps: int, giants: int
) -> list[Blob]:
    """Up to ``giants`` giants first (they need room), then ``n_slumps`` slumps of sampled
    areas; the first regular one straddles column min(1024, W // 2), the second row
    min(1024, H // 2). A slump that finds no room in 100 tries is drawn again at another size;
    a giant that finds none in 300 is left out (small scenes)."""
    height, width = layout.shape
    blobs: list[Blob] = []
    for k, area in enumerate([None] * giants + list(sample_slump_areas(rng, n_slumps))):
        for attempt in range(300 if area is None else 2000):
            if area is None:  # a giant: long, narrow, its long axis near a grid axis
                a = rng.uniform(*GIANT_LENGTH_PX) / 2
                b = a / rng.uniform(2.5, 3.5)
                theta = rng.choice([0, 0.5, 1, 1.5]) * np.pi + rng.uniform(-0.25, 0.25)
            else:
                if attempt and attempt % 100 == 0:
                    area = sample_slump_areas(rng, 1)[0]
                aspect = np.exp(rng.normal(np.log(1.7), 0.3))
                b = np.sqrt(area / (np.pi * aspect))
                a, theta = aspect * b, rng.uniform(0, 2 * np.pi)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if k == giants:
                cx = min(1024, width // 2) + rng.uniform(-0.4, 0.4) * a
            elif k == giants + 1:
                cy = min(1024, height // 2) + rng.uniform(-0.4, 0.4) * a
            blob = make_blob(rng, cx, cy, a, b, theta, rng.uniform(0.15, 0.35))
            if area is None and np.ptp(blob.vertices(), axis=0).max() <= 512:
                continue
            if layout.fits(blob, margin_px=12):
                blobs.append(blob)
                layout.take(*window_mask(blob.polygon(), layout.shape))
                break
    return blobs


def _paint_slump(rng: np.random.Generator, img: np.ndarray, blob: Blob) -> Polygon:
    """Paint a slump (streaked floor, headwall band on the side at parameter angle 0) into
    ``img`` (3, H, W) and return its footprint polygon."""
    poly = blob.polygon()
    (rs, cs), inside = window_mask(poly, img.shape[1:])
    rows, cols = np.arange(rs.start, rs.stop)[:, None], np.arange(cs.start, cs.stop)[None, :]
    rho, phi = blob.polar(rows, cols)
    u, v = blob.local(rows, cols)
    size = np.sqrt(blob.a * blob.b)
    wall_px = np.clip(0.15 * size, 1.5, 18) * np.clip(np.cos(phi), 0, 1) ** 0.5
    wall = inside & ((1 - rho) * size < wall_px)
    floor = inside & ~wall
    along = np.clip(u / blob.a, -1, 1)  # 1 at the headwall, -1 at the mouth
    period = rng.uniform(3, 6)
    streak_v = rng.standard_normal(int(2 * (blob.a + blob.b) / period) + 4)
    index = (v + blob.a + blob.b) / period + 0.8 * np.sin(u / rng.uniform(15, 40))
    streaks = np.interp(index, np.arange(streak_v.size), streak_v)
    shape = (rows.size, cols.size)
    hummocks = smooth_noise(rng, *shape, 5)
    tone = 7 * streaks + 4 * hummocks - 8 * (1 - along) + rng.normal(0, 3, shape)
    base = FLOOR + rng.normal(0, 10) + rng.normal(0, 4, 3)
    sub = img[:, rs, cs]  # a view: painting it paints img
    sub[:, floor] = base[:, None] + tone[floor][None]
    sub[:, wall] = HEADWALL[:, None] + rng.normal(0, 6, (3, int(wall.sum())))
    return poly


def _paint_water(rng: np.random.Generator, img: np.ndarray, layout: _Layout) -> tuple:
    """Paint a river across the scene and a few lakes; return the river (centre, half width)."""
    height, width = layout.shape
    centre, half = _river(rng, height, width)
    rows = np.arange(height, dtype=np.float32)[:, None]
    water = np.abs(rows - centre.astype(np.float32)) < half.astype(np.float32)
    layout.take((slice(None), slice(None)), water)
    lakes = 0
    for _ in range(200):
        if lakes == 3 + width * height // 2_000_000:
            break
        a = rng.uniform(20, 90)
        b = a * rng.uniform(0.55, 1)
        cx, cy, theta = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, np.pi)
        lake = make_blob(rng, cx, cy, a, b, theta, 0)
        if layout.fits(lake, margin_px=30):
            window, mask = window_mask(lake.polygon(), layout.shape)
            water[window] |= mask
            layout.take(window, mask)
            lakes += 1
    img[:, water] = WATER[:, None] + rng.normal(0, 2, (3, int(water.sum())))
    return centre, half


def render_scene(
    width: int,
    height: int,
    seed: int,
    *,
    giants: int = 0,
    roads: int = 1,
    nodata_cols: int = 40,
) -> Scene:
    """A seeded synthetic scene ``width`` x ``height`` px (3 m pixels); see the module docstring.

    ``giants`` slumps wider than 512 px (as many as fit) come on top of the regular ones.
    """
    rng = np.random.default_rng(seed)
    img = _terrain(rng, height, width)
    layout = _Layout((height, width), width - nodata_cols)
    river = _paint_water(rng, img, layout)
    lookalikes = _place_lookalikes(rng, img, layout, river, roads)
    n_slumps = round(SLUMPS_PER_MPX * height * (width - nodata_cols) / 1e6)
    slumps = [_paint_slump(rng, img, b) for b in _slump_blobs(rng, layout, n_slumps, giants)]
    cloud = np.clip(1.6 * (smooth_noise(rng, height, width, 250) - 1.1), 0, 1)
    img *= 1 - 0.4 * cloud  # cloud shadows
    img *= rng.uniform(0.92, 1.08, 3).astype(np.float32)[:, None, None]  # acquisition tint
    pixels = np.clip(np.rint(img, out=img), 1, 255, out=img).astype(np.uint8)
    pixels[:, :, width - nodata_cols :] = 0
    return Scene(pixels, slumps, lookalikes)

"""Shapes for synthetic scenes, in pixel space (x = column, y = row, pixel-corner coordinates).

Smooth noise fields, slump footprint areas drawn from the real distribution at 3 m
(log-normal, median ``SLUMP_MEDIAN_PX`` ~700 px, 5 % under ~80 px, measured on real RTS
labels), star-shaped ``Blob`` outlines (slumps, lakes) and the raster mask of a polygon.
``scenes`` places and paints them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from shapely import Polygon

SLUMP_MEDIAN_PX = 700.0  # median slump footprint, px at 3 m (real RTS labels)
SLUMP_LOG_SIGMA = 1.36  # log-normal sigma: 5 % of footprints under ~80 px
SLUMP_AREA_RANGE_PX = (20.0, 60000.0)  # draws outside are redrawn


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Float32 noise, standard deviation about 0.6, with features about ``cell`` px wide: white
    noise on a ``cell`` px lattice, interpolated with smoothstep weights (no visible lattice)."""
    coarse = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2), np.float32)
    rpos, cpos = ((np.arange(n, dtype=np.float32) + 0.5) / cell for n in (height, width))
    r0, c0 = rpos.astype(np.int64), cpos.astype(np.int64)
    wr, wc = (rpos - r0)[:, None], cpos - c0
    wr, wc = wr * wr * (3 - 2 * wr), wc * wc * (3 - 2 * wc)
    rows = coarse[r0] * (1 - wr) + coarse[r0 + 1] * wr
    return rows[:, c0] * (1 - wc) + rows[:, c0 + 1] * wc


def sample_slump_areas(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` slump footprint areas in px (3 m pixels) from the real log-normal distribution."""
    out = np.empty(0)
    lo, hi = SLUMP_AREA_RANGE_PX
    while out.size < n:
        draw = SLUMP_MEDIAN_PX * np.exp(SLUMP_LOG_SIGMA * rng.standard_normal(n))
        out = np.concatenate([out, draw[(draw >= lo) & (draw <= hi)]])
    return out[:n]


@dataclass
class Blob:
    """A star-shaped blob around (cx, cy) px: semi-axes a (along theta, radians) and b px.

    ``factor[k]`` scales the radius at parameter angle 2*pi*k/len(factor) (noisy edges);
    parameter angle 0 points along +a (a slump's headwall side), pi the other way (its mouth).
    ``taper`` widens the +a side and narrows the other: the half width across the axis at
    distance u along it is scaled by ``1 + taper * u / a`` (a teardrop, for taper > 0).
    """

    cx: float
    cy: float
    a: float
    b: float
    theta: float
    factor: np.ndarray
    taper: float = 0.0

    def vertices(self) -> np.ndarray:
        """(N, 2) boundary points (x = column, y = row, pixel-corner coordinates)."""
        phi = np.linspace(0, 2 * np.pi, self.factor.size, endpoint=False)
        u, v = self.a * self.factor * np.cos(phi), self.b * self.factor * np.sin(phi)
        v = v * self._widening(u)
        c, s = np.cos(self.theta), np.sin(self.theta)
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)

    def polygon(self) -> Polygon:
        return Polygon(self.vertices())

    def local(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) px of pixel centres along and across the blob's axis, from its centre."""
        dx, dy = cols + 0.5 - self.cx, rows + 0.5 - self.cy
        c, s = np.cos(self.theta), np.sin(self.theta)
        return c * dx + s * dy, -s * dx + c * dy

    def polar(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rho, phi) of pixel centres: rho < 1 inside, phi the parameter angle."""
        u, v = self.local(rows, cols)
        v = v / self._widening(u)
        phi = np.mod(np.arctan2(v / self.b, u / self.a), 2 * np.pi)
        grid = np.linspace(0, 2 * np.pi, self.factor.size + 1)
        factor = np.interp(phi, grid, np.append(self.factor, self.factor[0]))
        return np.hypot(u / self.a, v / self.b) / factor, phi

    def _widening(self, u: np.ndarray) -> np.ndarray:
        return np.maximum(1 + self.taper * u / self.a, 0.2)

    def box(self, shape: tuple[int, int], pad: float) -> tuple[slice, slice]:
        """Row and column slices of the blob's bounding square plus ``pad`` px, clipped."""
        r = max(self.a, self.b) * float(self.factor.max()) + pad
        return (
            slice(max(0, int(self.cy - r)), min(shape[0], int(self.cy + r) + 2)),
            slice(max(0, int(self.cx - r)), min(shape[1], int(self.cx + r) + 2)),
        )


def make_blob(
    rng: np.random.Generator, cx: float, cy: float, a: float, b: float, theta: float, notch: float
) -> Blob:
    """An elliptical blob with harmonic + jitter edge noise; ``notch`` > 0 pinches the mouth
    (parameter angle pi) and tapers the blob towards it, for a slump's amphitheatre shape."""
    phi = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    factor = 1 + sum(
        rng.uniform(0, 0.08 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 7)
    )
    jitter = rng.uniform(-0.03, 0.03, phi.size)
    factor += (np.roll(jitter, 1) + jitter + np.roll(jitter, -1)) / 3
    factor *= 1 - notch * np.exp(-0.5 * ((phi - np.pi) / 0.5) ** 2)
    return Blob(cx, cy, a, b, theta, factor, taper=1.5 * notch)


def window_mask(poly: Polygon, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """The polygon's bounding window in a (H, W) raster and its mask there (pixel centres
    inside); the window is empty when the polygon lies outside."""
    minx, miny, maxx, maxy = poly.bounds
    rs = slice(min(max(0, int(miny)), shape[0]), min(max(0, int(maxy) + 2), shape[0]))
    cs = slice(min(max(0, int(minx)), shape[1]), min(max(0, int(maxx) + 2), shape[1]))
    out = (rs.stop - rs.start, cs.stop - cs.start)
    if 0 in out:
        return (rs, cs), np.zeros(out, dtype=bool)
    offset = Affine.translation(cs.start, rs.start)
    return (rs, cs), rasterize([poly], out_shape=out, transform=offset) > 0

"""The bundled demo's data, made by code: a synthetic scene, its reference polygons, a model.

``make_scene`` writes a seeded, synthetic 3 m RGB uint8 GeoTIFF in EPSG:3413 (nodata 0) whose
top-left corner lies on the global grid lattice (origin (-4000100, 4100100) m, 3 m pixels),
near x = -2,200,000 m, y = 100,000 m (Canadian Arctic): tundra texture, lakes, a river and
slump-like scars (bright bare floors with a dark arcuate headwall), plus a 40-column nodata
strip on the right. The scars' floors are the reference polygons (GeoPackage, layer
``reference``). ``make_demo_model`` writes a tiny hand-set deterministic model folder, NOT a
trained network. Run ``python -m deepseg.demo [--force] [--root DIR]`` to make what is absent.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
import torch.nn.functional as F
import yaml
from affine import Affine
from rasterio.features import rasterize
from rasterio.profiles import DefaultGTiffProfile
from shapely import Polygon
from shapely.affinity import affine_transform

from .outputs import atomic_path
from .progress import setup_logging

log = logging.getLogger(__name__)

GRID_ORIGIN = (-4000100.0, 4100100.0)  # EPSG:3413 metres
RES_M = 3.0
SCENE_COL0, SCENE_ROW0 = 256 * 2344, 256 * 5208  # global grid pixel of the scene's top-left
CHUNK_PX = 1024  # demo chunk core (4 x 256 px strides); SCENE_COL0/ROW0 are multiples of it
NODATA_COLS = 40
DEMO_SEED, STATS_SEED = 7, 1234
BARE_SCORE = 105.0  # demo model: bare-ground score threshold, 0-255 units
TUNDRA_GREEN = np.array([78, 96, 58], dtype=np.float32)
TUNDRA_BROWN = np.array([104, 94, 68], dtype=np.float32)
WATER = np.array([28, 38, 50], dtype=np.float32)
HEADWALL = np.array([70, 58, 46], dtype=np.float32)


def scene_transform() -> Affine:
    """EPSG:3413 affine (metres) of the scene: its pixel (0, 0) is grid pixel (SCENE_COL0, ROW0)."""
    x0 = GRID_ORIGIN[0] + SCENE_COL0 * RES_M
    y0 = GRID_ORIGIN[1] - SCENE_ROW0 * RES_M
    return Affine(RES_M, 0.0, x0, 0.0, -RES_M, y0)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Unit-ish noise with features about ``cell`` px wide (bilinear-upsampled white noise)."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    rpos, cpos = ((np.arange(n, dtype=np.float32) + 0.5) / cell for n in (height, width))
    r0, c0 = rpos.astype(np.int64), cpos.astype(np.int64)
    wr, wc = rpos - r0, cpos - c0
    rows = coarse[r0] * (1 - wr[:, None]) + coarse[r0 + 1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c0 + 1] * wc


@dataclass
class _Blob:
    """A star-shaped blob around (cx, cy) px: semi-axes a, b px, rotated by theta (radians).

    ``factor[k]`` scales the radius at parameter angle 2*pi*k/len(factor) (noisy edges)."""

    cx: float
    cy: float
    a: float
    b: float
    theta: float
    factor: np.ndarray

    @property
    def reach(self) -> float:
        return max(self.a, self.b) * float(self.factor.max())

    @property
    def clearance(self) -> float:
        return 1.15 * self.reach + 10  # headwalls are at most 0.15 * sqrt(a * b) px wide

    def vertices(self) -> np.ndarray:
        """(N, 2) boundary points (x = column, y = row, pixel-corner coordinates)."""
        phi = np.linspace(0, 2 * np.pi, self.factor.size, endpoint=False)
        u, v = self.a * self.factor * np.cos(phi), self.b * self.factor * np.sin(phi)
        c, s = np.cos(self.theta), np.sin(self.theta)
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)

    def polar(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rho, phi) of pixel centres: rho < 1 inside, phi the parameter angle."""
        dx, dy = cols + 0.5 - self.cx, rows + 0.5 - self.cy
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, v = (c * dx + s * dy) / self.a, (-s * dx + c * dy) / self.b
        phi = np.mod(np.arctan2(v, u), 2 * np.pi)
        grid = np.linspace(0, 2 * np.pi, self.factor.size + 1)
        factor = np.interp(phi, grid, np.append(self.factor, self.factor[0]))
        return np.hypot(u, v) / factor, phi

    def box(self, height: int, width: int, pad: float) -> tuple[slice, slice]:
        """Row and column slices of the blob's bounding square plus ``pad`` px, in the scene."""
        r = self.reach + pad
        return (
            slice(max(0, int(self.cy - r)), min(height, int(self.cy + r) + 2)),
            slice(max(0, int(self.cx - r)), min(width, int(self.cx + r) + 2)),
        )


def _make_blob(rng: np.random.Generator, cx: float, cy: float, a: float, notch: float) -> _Blob:
    """An elliptical blob with harmonic + jitter edge noise and a notch (horse-shoe) at phi=pi."""
    phi = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    factor = 1 + sum(
        rng.uniform(0, 0.1 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 7)
    )
    jitter = rng.uniform(-0.04, 0.04, phi.size)
    factor += (np.roll(jitter, 1) + jitter + np.roll(jitter, -1)) / 3
    factor *= 1 - notch * np.exp(-0.5 * ((phi - np.pi) / 0.45) ** 2)
    return _Blob(cx, cy, a, a * rng.uniform(0.55, 0.9), rng.uniform(0, 2 * np.pi), factor)


def _place(placed: list[_Blob], river: np.ndarray, shape: tuple[int, int], blob: _Blob) -> bool:
    """True when ``blob`` and its clearance (room for a headwall plus 10 px) lie inside the
    valid area, off the river and clear of the ``placed`` blobs."""
    height, width = shape
    r = blob.clearance
    if not (r < blob.cx < width - NODATA_COLS - r and r < blob.cy < height - r):
        return False
    if np.any(np.abs(river[int(blob.cx - r) : int(blob.cx + r) + 1] - blob.cy) < r + 8):
        return False
    return all(np.hypot(blob.cx - o.cx, blob.cy - o.cy) > r + o.clearance for o in placed)


def _layout(
    rng: np.random.Generator, shape: tuple[int, int], river: np.ndarray
) -> tuple[list[_Blob], list[_Blob]]:
    """Lakes, then scars: the first three are a large one (> 300 px wide at full size), one
    straddling column min(1024, width // 2) and one straddling row min(1024, height // 2)."""
    height, width = shape
    small = min(shape)
    lakes: list[_Blob] = []
    for _ in range(300):
        if len(lakes) == 3:
            break
        a = rng.uniform(0.03, 0.07) * small
        lake = _make_blob(rng, rng.uniform(0, width), rng.uniform(0, height), a, 0.0)
        if _place(lakes, river, shape, lake):
            lakes.append(lake)
    col, row = min(CHUNK_PX, width // 2), min(CHUNK_PX, height // 2)
    big, scale = min(185.0, small / 8), min(1.0, small / 1024)  # small scenes, smaller scars
    scars: list[_Blob] = []
    n_scars = int(rng.integers(14, 19))
    for _ in range(5000):
        k = len(scars)
        if k == n_scars:
            break
        if k < 3:
            a = big if k == 0 else rng.uniform(30, 60) * scale
        else:
            a = np.exp(rng.uniform(1.6, 4.1))  # semi-axis 5-60 px
        cx = col + rng.uniform(-0.2, 0.2) * a if k == 1 else rng.uniform(0, width)
        cy = row + rng.uniform(-0.2, 0.2) * a if k == 2 else rng.uniform(0, height)
        scar = _make_blob(rng, cx, cy, a, rng.uniform(0.2, 0.3 if k < 3 else 0.5))
        wide = k != 0 or np.ptp(scar.vertices()[:, 0]) > min(300.0, 1.6 * big)
        if wide and _place(lakes + scars, river, shape, scar):
            scars.append(scar)
    return lakes, scars


def _paint_scar(rng: np.random.Generator, img: np.ndarray, scar: _Blob) -> Polygon:
    """Paint the scar's bare floor and its headwall (the arc at parameter angle 0, opposite
    the mouth) into ``img`` (3, H, W) and return the floor polygon (pixel-corner coords)."""
    rs, cs = scar.box(img.shape[1], img.shape[2], pad=12)
    rows, cols = np.arange(rs.start, rs.stop)[:, None], np.arange(cs.start, cs.stop)[None, :]
    rho, phi = scar.polar(rows, cols)
    poly = Polygon(scar.vertices())
    out_shape = (rows.size, cols.size)
    floor = rasterize([poly], out_shape, transform=Affine.translation(cs.start, rs.start)) > 0
    headwall_px = np.clip(0.15 * np.sqrt(scar.a * scar.b), 3, 25) * np.cos(phi)
    wall = ~floor & (rho > 0.9) & ((rho - 1) * np.sqrt(scar.a * scar.b) < headwall_px)
    sub = img[:, rs, cs]  # a view: painting it paints img
    base = 166 + rng.uniform(-10, 10) + rng.uniform(-4, 4, 3) + np.array([10.0, 4, -10])
    wet = 12 * (1 - np.cos(phi[floor])) / 2 * rho[floor]  # darker, wetter towards the mouth
    n = int(floor.sum())
    grey = rng.normal(0, 7, n) - wet
    sub[:, floor] = base[:, None] + grey[None] + rng.normal(0, 3, (3, n))
    sub[:, wall] = HEADWALL[:, None] + rng.normal(0, 5, (3, int(wall.sum())))
    return poly


def render_scene(width: int, height: int, seed: int) -> tuple[np.ndarray, list[Polygon]]:
    """The scene's pixels, (3, height, width) uint8 (0 = nodata), and the scar floor polygons
    in pixel-corner coordinates (x = column, y = row)."""
    rng = np.random.default_rng(seed)
    mix = np.clip(0.5 + 0.35 * _smooth_noise(rng, height, width, 192), 0, 1)
    shade = 6 * _smooth_noise(rng, height, width, 24) + 3 * _smooth_noise(rng, height, width, 4)
    img = np.empty((3, height, width), dtype=np.float32)
    for b in range(3):  # band by band, in place, to keep memory to a few full-size arrays
        np.multiply(mix, TUNDRA_BROWN[b] - TUNDRA_GREEN[b], out=img[b])
        img[b] += shade
        img[b] += TUNDRA_GREEN[b] + 3 * rng.standard_normal((height, width), dtype=np.float32)
    del mix
    x = np.arange(width)
    phase = rng.uniform(0, 2 * np.pi, 2)
    river = height * (0.72 + 0.08 * np.sin(2 * np.pi * x / (0.9 * width) + phase[0]))
    river += 12 * np.sin(2 * np.pi * x / 230 + phase[1])  # row (px) of its centre line
    half_px = (5 + 2 * np.sin(x / 97.0)).astype(np.float32)
    water = np.abs(np.arange(height, dtype=np.float32)[:, None] - river.astype(np.float32))
    water = water < half_px
    lakes, scars = _layout(rng, (height, width), river)
    for lake in lakes:
        rs, cs = lake.box(height, width, pad=2)
        rho, _ = lake.polar(np.arange(rs.start, rs.stop)[:, None], np.arange(cs.start, cs.stop))
        water[rs, cs] |= rho < 1
    for b in range(3):
        img[b][water] = WATER[b] + 0.3 * shade[water]
    polygons = [_paint_scar(rng, img, scar) for scar in scars]
    pixels = np.clip(np.rint(img, out=img), 1, 255, out=img).astype(np.uint8)
    pixels[:, :, width - NODATA_COLS :] = 0
    return pixels, polygons


def make_scene(
    path: Path, reference_path: Path, *, width: int = 2560, height: int = 2048, seed: int = 7
) -> None:
    """Write the synthetic scene (``width`` x ``height`` px, 3 m, EPSG:3413, RGB uint8, nodata
    0) to ``path`` and its scar floors (EPSG:3413 polygons, column ``rts_id``) to
    ``reference_path`` (GeoPackage, layer ``reference``). Same seed, same pixels."""
    pixels, polygons = render_scene(width, height, seed)
    transform = scene_transform()
    profile = DefaultGTiffProfile(  # uint8, nodata 0, 256 px tiles, LZW
        width=width, height=height, count=3, crs="EPSG:3413", transform=transform
    )
    profile.update(interleave="pixel", photometric="RGB")
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pixels)
        dst.descriptions = ("red", "green", "blue")
    to_map = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    reference = gpd.GeoDataFrame(
        {"rts_id": np.arange(1, len(polygons) + 1, dtype=np.int64)},
        geometry=[affine_transform(p, to_map) for p in polygons],
        crs="EPSG:3413",
    )
    with atomic_path(reference_path) as tmp:
        reference.to_file(tmp, layer="reference", driver="GPKG")


class DemoBareGround(torch.nn.Module):
    """HAND-SET DETERMINISTIC stand-in for a segmentation model; NOT trained.

    Input N x 3 x H x W normalized RGB (``(x - mean) / std``, stats in 0-255 units); output
    N x 1 x H x W logits ``gain * (box5x5(score) - threshold)`` with ``score = mean(R, G, B)
    - chroma_weight * (max - min)`` on de-normalized RGB: bright, low-saturation bare ground.
    """

    def __init__(self, mean: list[float], std: list[float], threshold: float = BARE_SCORE) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.threshold = float(threshold)  # score units (0-255 scale)
        self.chroma_weight = 0.5
        self.gain = 0.1  # logit per score unit: +-10 units from threshold -> p = 0.27 / 0.73
        self.kernel_px = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean
        chroma = rgb.amax(dim=1, keepdim=True) - rgb.amin(dim=1, keepdim=True)
        score = rgb.mean(dim=1, keepdim=True) - self.chroma_weight * chroma
        pad = self.kernel_px // 2
        local = F.avg_pool2d(score, self.kernel_px, 1, pad, count_include_pad=False)
        return self.gain * (local - self.threshold)


def _scene_stats(seed: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std (0-255 units) of the valid pixels of a scene made with ``seed``."""
    with tempfile.TemporaryDirectory() as tmp:
        make_scene(Path(tmp) / "scene.tif", Path(tmp) / "reference.gpkg", seed=seed)
        with rasterio.open(Path(tmp) / "scene.tif") as src:
            pixels = src.read()
    valid = pixels.any(axis=0)
    bands = [pixels[b][valid].astype(np.float64) for b in range(3)]
    return [round(float(v.mean()), 3) for v in bands], [round(float(v.std()), 3) for v in bands]


def make_demo_model(model_dir: Path) -> None:
    """Write the demo model folder: TorchScript ``best_model.pth`` (``DemoBareGround``),
    ``normalization_stats.json`` (from a scene with seed ``STATS_SEED``, not the demo's) and
    ``config.yaml``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    mean, std = _scene_stats(STATS_SEED)
    weights = model_dir / "best_model.pth"
    buffer = io.BytesIO()  # saved from memory so the archive is not named after the temp file
    torch.jit.save(torch.jit.script(DemoBareGround(mean, std)), buffer)
    with atomic_path(weights) as tmp:
        tmp.write_bytes(buffer.getvalue())
    stats = {
        "mean": mean,
        "std": std,
        "data_version": "demo-synthetic-v1",
        "note": f"valid pixels of deepseg.demo.make_scene(seed={STATS_SEED}), 0-255 units",
    }
    config = {
        "framework": "torchscript",
        "in_channels": 3,
        "classes": 1,
        "threshold": 0.5,
        "model_version": "demo-deterministic-v1",
        "description": (
            "Hand-set deterministic stand-in, NOT a trained network: logit = 0.1 * (5x5 mean "
            f"of (mean(RGB) - 0.5 * (max(RGB) - min(RGB))) - {BARE_SCORE:g}), flagging bright, "
            "low-saturation bare ground. Made by deepseg.demo.make_demo_model for the demo only."
        ),
    }
    texts = {
        "normalization_stats.json": json.dumps(stats, indent=2) + "\n",
        "config.yaml": yaml.safe_dump(config, sort_keys=False),
    }
    for name, text in texts.items():
        with atomic_path(model_dir / name) as tmp:
            tmp.write_text(text)


def ensure_demo(repo_root: Path, force: bool = False) -> None:
    """Make ``data/demo/scene.tif``, ``reference.gpkg`` (seed 7) and ``model/`` under
    ``repo_root`` where absent (or always, with ``force``)."""
    demo = repo_root / "data" / "demo"
    scene, reference, model_dir = demo / "scene.tif", demo / "reference.gpkg", demo / "model"
    if force or not (scene.exists() and reference.exists()):
        start = time.perf_counter()
        make_scene(scene, reference, seed=DEMO_SEED)
        log.info("made %s and %s in %.1f s", scene, reference, time.perf_counter() - start)
    names = ("best_model.pth", "normalization_stats.json", "config.yaml")
    if force or not all((model_dir / name).exists() for name in names):
        start = time.perf_counter()
        make_demo_model(model_dir)
        log.info("made the demo model %s in %.1f s", model_dir, time.perf_counter() - start)
    log.info("demo data ready in %s", demo)


def main(argv: list[str] | None = None) -> None:
    """``python -m deepseg.demo [--force] [--root DIR]``."""
    parser = argparse.ArgumentParser(description="Make the demo scene, reference and model.")
    parser.add_argument("--force", action="store_true", help="remake files that exist")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the DeepSeg checkout")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("pyogrio").setLevel(logging.WARNING)
    ensure_demo(args.root, force=args.force)


if __name__ == "__main__":
    # Run the imported module's main, so TorchScript names the model class
    # deepseg.demo.DemoBareGround rather than __main__.DemoBareGround.
    from deepseg.demo import main as package_main

    package_main()

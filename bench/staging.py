"""The runs bench/throughput.py measures: model folders, a synthetic scene, staged stores.

A synthetic run covers ``chunks`` whole chunks (as square a block as fits, from chunk
``FIRST_CHUNK``) with the demo's scene texture, repeated: the scene starts ``tile - stride``
px into the first chunk and ends where the last chunk's core ends, so exactly the K x K tiles
of each chunk touch it. Every set of inference scales gets its own output folder, staged by
create_tiles with that set's halo, as a real run with those scales would be.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import rasterio
import torch
import yaml
from rasterio.profiles import DefaultGTiffProfile
from rasterio.windows import Window

from deepseg.config import Experiment, load_experiment
from deepseg.geo.grid import PixelBox, TileGrid
from deepseg.stages.tiles import create_tiles
from deepseg.storage.paths import atomic_path
from deepseg.synthetic.demo import NODATA_COLS, ensure_demo
from deepseg.synthetic.scenes import render_scene

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "data" / "demo" / "model"
FIRST_CHUNK = (100, 100)  # chunk (col, row) of a synthetic run's top-left chunk
TEXTURE_PX = 2048  # side of the scene texture block that is repeated


def write_model_folder(arch: str, folder: Path, bands: int = 3) -> Path:
    """A model folder with random weights (seed 0): ``unet-resnet34`` (framework smp, a
    DARTS-layout checkpoint) or the built-in ``deepseg-unet`` (base 16, depth 4)."""
    torch.manual_seed(0)
    config: dict = {"threshold": 0.5, "classes": 1, "model_version": f"bench-{arch}-random"}
    if arch == "unet-resnet34":
        try:
            import segmentation_models_pytorch as smp
        except ImportError:
            raise SystemExit("--arch unet-resnet34 needs pip install -e '.[smp]'") from None
        kwargs = {"arch": "Unet", "encoder_name": "resnet34", "in_channels": bands, "classes": 1}
        state = smp.create_model(**kwargs, encoder_weights=None).state_dict()
        weights = {"config": {"model_framework": "smp", "model": kwargs}, "statedict": state}
        config["framework"] = "smp"
    elif arch == "deepseg-unet":
        from deepseg.model.unet import DeepSegUNet

        weights = DeepSegUNet(in_channels=bands).state_dict()
        config.update(framework="deepseg-unet", in_channels=bands, base_channels=16, depth=4)
    else:
        raise SystemExit(f"--arch: expected unet-resnet34 or deepseg-unet, got {arch!r}")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(weights, folder / "best_model.pth")
    stats = {"mean": [100.0] * bands, "std": [40.0] * bands, "data_version": "bench"}
    (folder / "normalization_stats.json").write_text(json.dumps(stats))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_scene(path: Path, grid: TileGrid, box: PixelBox) -> None:
    """A 3-band uint8 GeoTIFF over ``box`` (grid px, EPSG:3413): the demo's texture, repeated."""
    side = min(TEXTURE_PX, max(box.width, box.height))
    block = render_scene(side + NODATA_COLS, side, seed=11).pixels[:, :, :side]
    profile = DefaultGTiffProfile(
        width=box.width,
        height=box.height,
        count=3,
        crs="EPSG:3413",
        transform=grid.transform(box),
        num_threads="all_cpus",
    )
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, box.height, side):
            for col in range(0, box.width, side):
                h, w = min(side, box.height - row), min(side, box.width - col)
                dst.write(block[:, :h, :w], window=Window(col, row, w, h))


def synthetic_experiment(
    work: Path, model_dir: Path, chunks: int, grid_keys: dict, device: str
) -> Experiment:
    """The synthetic run of ``chunks`` chunks on the grid ``grid_keys`` (tile_size, stride,
    chunk_tiles), in a folder of ``work`` named after its layout; the scene is made once."""
    across = math.ceil(math.sqrt(chunks))
    down = math.ceil(chunks / across)
    folder = work / ("-".join(f"{k}{v}" for k, v in grid_keys.items()) + f"-{across}x{down}")
    folder.mkdir(parents=True, exist_ok=True)
    scene, exp_path = folder / "scene.tif", folder / "throughput.yaml"
    experiment = {
        "name": "throughput",
        "output": {"path": str(folder / "run")},
        "input": {"rasters": [str(scene)]},
        "grid": grid_keys,
        "model": {"dir": str(model_dir)},
        "inference": {"device": device},
    }
    exp_path.write_text(yaml.safe_dump(experiment))
    if not scene.exists():
        scene.touch()  # load_experiment checks that the inputs exist
        grid = TileGrid.from_experiment(load_experiment(exp_path))
        first = grid.chunk_core(*FIRST_CHUNK)
        last = grid.chunk_core(FIRST_CHUNK[0] + across - 1, FIRST_CHUNK[1] + down - 1)
        over = grid.tile_size - grid.stride
        write_scene(
            scene, grid, PixelBox(first.col0 + over, first.row0 + over, last.col1, last.row1)
        )
    return load_experiment(exp_path)


def demo_experiment(work: Path, model_dir: Path | None) -> Experiment:
    """The demo experiment on the CPU, writing under ``work`` (its data made if absent)."""
    ensure_demo(REPO)
    exp = load_experiment(REPO / "experiments" / "demo.yaml")
    return dataclasses.replace(
        exp,
        output=dataclasses.replace(exp.output, path=work / "demo"),
        model=dataclasses.replace(exp.model, dir=model_dir or exp.model.dir),
        inference=dataclasses.replace(exp.inference, device="cpu"),
    )


def _tiles_shard(exp: Experiment, shard: tuple[int, int]) -> None:
    create_tiles(exp, shard=shard)


def staged(exp: Experiment, scales: tuple[float, ...], processes: int) -> Experiment:
    """``exp`` with ``scales``, writing to its own folder for that scale set, whose tile stores
    create_tiles made (in ``processes`` shards at once, then once whole to record the stage;
    finished chunks are skipped, so a second call costs nothing)."""
    suffix = "-".join(f"{s:g}" for s in scales)
    exp = dataclasses.replace(
        exp,
        output=dataclasses.replace(exp.output, path=Path(f"{exp.output.path}-scales-{suffix}")),
        inference=dataclasses.replace(exp.inference, scales=scales),
    )
    processes = min(processes, os.cpu_count() or 1)
    if processes > 1:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            shards = [(i, processes) for i in range(processes)]
            list(pool.map(_tiles_shard, [exp] * processes, shards))
    create_tiles(exp)
    return exp

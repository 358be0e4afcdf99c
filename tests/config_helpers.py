"""Shared by the config tests: tiny real inputs and experiment files under a tmp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from deepseg.config import ConfigError, load_experiment


def write_tif(path: Path) -> Path:
    """A tiny real 1-band GeoTIFF on the EPSG:3413 3 m grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:3413")
    transform = Affine(3.0, 0, -4000100.0, 0, -3.0, 4100100.0)
    with rasterio.open(path, "w", transform=transform, **profile) as dst:
        dst.write(np.ones((1, 4, 4), dtype=np.uint8))
    return path


def write_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("best_model.pth", "normalization_stats.json", "config.yaml"):
        (folder / name).write_text("{}")
    return folder


def write_yaml(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def make_base(tmp_path: Path) -> Path:
    """tmp/base.yaml: a complete experiment whose paths are relative to tmp/."""
    write_tif(tmp_path / "scenes" / "b.tif")
    write_tif(tmp_path / "scenes" / "a.tif")
    write_model(tmp_path / "model")
    return write_yaml(
        tmp_path / "base.yaml", {"input": {"rasters": ["scenes/*.tif"]}, "model": {"dir": "model"}}
    )


def child(tmp_path: Path, data: dict, name: str = "experiments/demo.yaml") -> Path:
    """An experiment in tmp/experiments/ that extends tmp/base.yaml."""
    return write_yaml(tmp_path / name, {"extends": "../base.yaml", **data})


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "\n" not in message
    return message

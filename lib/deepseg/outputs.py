"""The layout of a run's outputs under ``output.path``, and writing files atomically.

    tiles/{chunk}.kea             tile stores (one per chunk, see ``stores``)
    predictions/{chunk}.kea       probability stores (one per chunk)
    merged/{region}_prob.tif      float32 probability COG, nodata -1
    merged/{region}_binary.tif    uint8 0/1 COG, nodata 255
    vectors/rts_predictions.gpkg  polygons
    logs/inference_log.json       what ran, with which model and settings, and how long
    logs/experiment.yaml          the resolved experiment (every default filled in)

Every file is written under a temporary name beside its final one (``.STEM.partial.EXT``,
hidden, extension kept so GDAL drivers still recognise it) and renamed into place only when
complete, so a crash never leaves a half-written output; ``finished_files`` never lists them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import Experiment

PARTIAL_PREFIX = "."
PARTIAL_MARK = ".partial"


@dataclass(frozen=True)
class RunPaths:
    """Where each stage of one experiment reads and writes."""

    root: Path

    @classmethod
    def of(cls, exp: Experiment) -> RunPaths:
        return cls(Path(exp.output.path))

    @property
    def tiles(self) -> Path:
        return self.root / "tiles"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def vectors(self) -> Path:
        return self.root / "vectors"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def tile_stores(self) -> list[Path]:
        """The finished tile stores, sorted by chunk id."""
        return finished_files(self.tiles, ".kea")

    def prob_stores(self) -> list[Path]:
        """The finished probability stores, sorted by chunk id."""
        return finished_files(self.predictions, ".kea")

    def tile_store(self, chunk_id: str) -> Path:
        return self.tiles / f"{chunk_id}.kea"

    def prob_store(self, chunk_id: str) -> Path:
        return self.predictions / f"{chunk_id}.kea"

    def region_prob(self, region: str) -> Path:
        return self.merged / f"{region}_prob.tif"

    def region_binary(self, region: str) -> Path:
        return self.merged / f"{region}_binary.tif"

    @property
    def polygons(self) -> Path:
        return self.vectors / "rts_predictions.gpkg"

    @property
    def run_log(self) -> Path:
        return self.logs / "inference_log.json"


def partial_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``."""
    return path.with_name(f"{PARTIAL_PREFIX}{path.stem}{PARTIAL_MARK}{path.suffix}")


def finished_files(folder: Path, suffix: str) -> list[Path]:
    """Files in ``folder`` ending in ``suffix``, sorted, without partial (temporary) ones."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")
    )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` on success, delete it on error.

    The parent folder is created on first use. A leftover partial file from an earlier
    crash is overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill (``.NAME.partial``); on success it takes the place of
    ``path``, on error it is deleted. An existing ``path`` is moved aside (``.NAME.old``) and
    deleted only once the new folder is in place, so a crash never leaves a half-filled one.
    """
    tmp, old = partial_path(path), path.with_name(f"{PARTIAL_PREFIX}{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

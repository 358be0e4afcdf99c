"""The layout of a run's outputs under ``output.path``, and writing files atomically.

    tiles/{chunk}.kea             tile stores (one per chunk, see ``stores``)
    predictions/{chunk}.kea       probability stores (one per chunk)
    merged/{region}_prob.tif      float32 probability COG, nodata -1
    merged/{region}_binary.tif    uint8 0/1 COG, nodata 255
    merged/{region}_{product}.tif optional products (merge.products)
    merged/{region}_prob.kea, merged/{region}_binary.kea   the same as KEA (merge.formats: kea)
    vectors/rts_predictions.gpkg  polygons (layer rts_predictions) and layer footprints
    vectors/pieces/{chunk}.fgb    per chunk: polygon pieces and footprint (FlatGeobuf)
    logs/inference_log.json       what ran, with which model and settings, and how long
    logs/experiment.yaml          the resolved experiment (every default filled in)
    logs/evaluation.json          evaluate.py: metrics against reference polygons
    logs/evaluation_pr_curve.png  evaluate.py: pixel precision-recall curve over thresholds
    logs/evaluation_errors.gpkg   evaluate.py: TP/FP/FN polygons (layer evaluation_errors)
    logs/calibration.json         evaluate.py --calibrate: the threshold merge.threshold can use

Every file is written under a temporary name beside its final one
(``.STEM.HOST-PID-RANDOM.partial.EXT``: unique per writer, hidden, extension kept so GDAL
drivers still recognise it) and renamed into place only when complete, so a crash never leaves
a half-written output and two writers never share a file; ``finished_files`` never lists them.

With a ``gs://`` ``output.path`` the same layout is written under the local ``output.scratch``
folder and mirrored to the bucket (see ``mirror``). Stages see no difference as long as they
ask ``RunPaths``: ``done(path)`` (is this output finished, here or in the bucket?),
``local(path)`` / ``local_folder(folder)`` (a verified local copy to read), ``flush()`` (wait
for the uploads), and write through ``atomic_path``, which publishes each finished file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.progress import progress
from .mirrors import attach_mirror, covering_mirror
from .remote import GsUri

if TYPE_CHECKING:
    from ..config import Experiment
    from .mirror import Mirror

log = logging.getLogger(__name__)
PARTIAL_PREFIX = "."
PARTIAL_MARK = ".partial"
# a chunk's files relative to output.path, as ``Stage.expected`` and the manifest name them
# (strings: a driver asks for 10^6 of them, and a Path costs ~1 us more each)
TILE_STORE, PROB_STORE, CHUNK_PIECES = "tiles/{}.kea", "predictions/{}.kea", "vectors/pieces/{}.fgb"


@dataclass(frozen=True)
class RunPaths:
    """Where each stage of one experiment reads and writes."""

    root: Path  # the local folder: the outputs, or the scratch copy of a gs:// run
    remote: GsUri | None = None  # where a gs:// run's outputs are published

    @classmethod
    def of(cls, exp: Experiment) -> RunPaths:
        return _run_paths(exp.output.path, exp.output.scratch)

    def refresh(self) -> None:
        """Forget what was seen in the bucket: the next question lists it again (a stage does
        this once as it starts; other workers may have finished units meanwhile)."""
        m = self._mirror
        if m is not None:
            m.forget()

    @property
    def _mirror(self) -> Mirror | None:
        return attach_mirror(self.root, self.remote) if self.remote is not None else None

    def show(self, path: Path) -> str:
        """Where ``path`` lives, for messages: its gs:// URI in a gs:// run."""
        m = self._mirror
        return str(m.remote / m.key(path)) if m is not None else str(path)

    def done(self, path: Path) -> bool:
        """Whether the output ``path`` is finished (a gs:// run also asks the bucket, and
        uploads a finished local file the bucket lacks)."""
        m = self._mirror
        return m.finished(path) if m is not None else path.exists()

    def done_checker(self) -> Callable[[Path | str], bool]:
        """``done`` for many paths (a ``str`` is relative to ``root``), a snapshot: each folder
        is listed once, when first asked about (not one stat per file: 10^5 stats on a
        parallel file system take minutes)."""
        if self.remote is not None:
            return lambda path: self.done(self.root / path if isinstance(path, str) else path)
        root = os.fspath(self.root) + os.sep
        listed: dict[str, frozenset[str]] = {}

        def done(path: Path | str) -> bool:
            full = root + path if isinstance(path, str) else os.fspath(path)
            folder, _, name = full.rpartition(os.sep)  # os.path.split, at 10^6 calls a run
            names = listed.get(folder)
            if names is None:
                try:
                    names = frozenset(os.listdir(folder))
                except (FileNotFoundError, NotADirectoryError):
                    names = frozenset()
                listed[folder] = names
            return name in names

        return done

    def local(self, path: Path) -> Path:
        """``path``, downloaded first (verified) when only the bucket holds it."""
        m = self._mirror
        return m.fetch(path) if m is not None else path

    def local_folder(self, folder: Path, suffix: str = "") -> Path:
        """``folder`` with a verified local copy of every finished file in it."""
        m = self._mirror
        if m is not None:
            names = sorted(m.names(folder, suffix))
            for name in progress(names, len(names), f"local copies of {self.show(folder)}", log):
                m.fetch(folder / name)
        return folder

    def flush(self, raise_errors: bool = True) -> None:
        """Wait until every finished file is in the bucket (nothing to do in a local run)."""
        m = self._mirror
        if m is not None:
            m.flush(raise_errors)

    def finished(self, folder: Path, suffix: str) -> list[Path]:
        """Finished files in ``folder`` ending in ``suffix``, sorted: here or in the bucket."""
        m = self._mirror
        if m is None:
            return finished_files(folder, suffix)
        return [folder / name for name in sorted(m.names(folder, suffix))]

    @functools.cached_property  # asked once per unit: build the Path once
    def tiles(self) -> Path:
        return self.root / "tiles"

    @functools.cached_property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @functools.cached_property
    def merged(self) -> Path:
        return self.root / "merged"

    @functools.cached_property
    def vectors(self) -> Path:
        return self.root / "vectors"

    @functools.cached_property
    def logs(self) -> Path:
        return self.root / "logs"

    def tile_stores(self) -> list[Path]:
        """The finished tile stores, sorted by chunk id (read them through ``local``)."""
        return self.finished(self.tiles, ".kea")

    def prob_stores(self) -> list[Path]:
        """The finished probability stores, sorted by chunk id (read them through ``local``)."""
        return self.finished(self.predictions, ".kea")

    def tile_store(self, chunk_id: str) -> Path:
        return self.root / TILE_STORE.format(chunk_id)

    def prob_store(self, chunk_id: str) -> Path:
        return self.root / PROB_STORE.format(chunk_id)

    def chunk_pieces(self, chunk_id: str) -> Path:
        """A chunk's polygon pieces and footprint, gathered into ``polygons``."""
        return self.root / CHUNK_PIECES.format(chunk_id)

    def relative(self, path: Path) -> str:
        """``path`` relative to ``root``, as the manifest records outputs."""
        return path.relative_to(self.root).as_posix()

    def region_layer(self, region: str, layer: str) -> Path:
        """A merged raster of a region: layer prob, binary, uncertainty or scales."""
        return self.merged / f"{region}_{layer}.tif"

    def region_prob(self, region: str) -> Path:
        return self.region_layer(region, "prob")

    def region_binary(self, region: str) -> Path:
        return self.region_layer(region, "binary")

    def region_preview(self, region: str) -> Path:
        """The region's colour preview with legend (``merge.products: [preview]``)."""
        return self.merged / f"{region}_preview.png"

    def region_kea(self, region: str, product: str) -> Path:
        """The KEA copy of a merged raster; ``product`` is "prob" or "binary"."""
        return self.merged / f"{region}_{product}.kea"

    @property
    def polygons(self) -> Path:
        return self.vectors / "rts_predictions.gpkg"

    @functools.cached_property
    def pieces(self) -> Path:
        """The folder of ``chunk_pieces``."""
        return self.vectors / "pieces"

    @property
    def run_log(self) -> Path:
        return self.logs / "inference_log.json"

    @property
    def evaluation_report(self) -> Path:
        return self.logs / "evaluation.json"

    @property
    def evaluation_pr_curve(self) -> Path:
        return self.logs / "evaluation_pr_curve.png"

    @property
    def evaluation_errors(self) -> Path:
        return self.logs / "evaluation_errors.gpkg"

    @property
    def calibration(self) -> Path:
        return self.logs / "calibration.json"


@functools.lru_cache(maxsize=64)
def _run_paths(output: Path | GsUri, scratch: Path) -> RunPaths:
    """The paths of a run (cached: stages ask once per unit, 10^5 times)."""
    if isinstance(output, GsUri):
        attach_mirror(scratch, output)
        return RunPaths(scratch, output)
    return RunPaths(Path(output))


def writer_token() -> str:
    """``HOST-PID-RANDOM``: unique to one writer, so two writers of one file never collide."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def partial_path(path: Path) -> Path:
    """A new temporary name to write ``path`` under before it is renamed into place:
    ``.STEM.HOST-PID-RANDOM.partial.EXT``, hidden, unique per call, extension kept."""
    return path.with_name(
        f"{PARTIAL_PREFIX}{path.stem}.{writer_token()}{PARTIAL_MARK}{path.suffix}"
    )


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

    The parent folder is created on first use. The temporary name is unique to this call
    (``partial_path``), so concurrent writers of one file never write into each other's; the
    last rename wins, whole. A writer killed before its rename leaves a hidden ``.*.partial*``
    file that nothing reads (``finished_files`` and sync skip it) and that is safe to delete.
    A file inside a gs:// run's scratch folder is then published to
    the bucket (see ``mirror``; ``remote.Conflict`` for a log another worker changed meanwhile).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(path)


def publish(path: Path) -> None:
    """Hand a finished file to the bucket mirror covering it, if any (a local run has none)."""
    published_by = covering_mirror(path)
    if published_by is not None:
        published_by.publish(path)

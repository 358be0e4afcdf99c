"""The model folder on this machine, and the hashes of its files for the run log."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import MODEL_FILES, Experiment
from ..storage.cache import cache_root, cached_copy
from ..storage.checksums import file_checksums
from ..storage.remote import GsUri

log = logging.getLogger(__name__)


def local_model_dir(exp: Experiment) -> Path:
    """The model folder on this machine (a gs:// one copied once, its hashes logged)."""
    if not isinstance(exp.model.dir, GsUri):
        return exp.model.dir
    folder = cached_copy(exp.model.dir / MODEL_FILES[0], cache_root(exp)).parent
    for name in MODEL_FILES[1:]:
        cached_copy(exp.model.dir / name, cache_root(exp))
    for name, sums in model_hashes(folder).items():
        log.info("model file %s: CRC32C %s, MD5 %s", exp.model.dir / name, *sums.values())
    return folder


def model_hashes(folder: Path) -> dict[str, dict[str, str]]:
    """CRC32C and MD5 (base64, as GCS reports them) of each model file, for the run log."""
    return {n: vars(file_checksums(folder / n)) for n in MODEL_FILES}

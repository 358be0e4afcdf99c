"""gs:// files made readable on this machine.

- Rasters (``input.rasters``): with no ``input.cache_dir`` GDAL reads each COG by window over
  the network (``/vsigs/``, same credentials, see ``gcs``); with one, each object is downloaded
  once into ``cache_dir/BUCKET/KEY`` (CRC32C-verified) and read locally.
- Other files (the model folder, ``grid.tile_list``) are always copied once into the cache:
  ``input.cache_dir``, else ``.cache/`` in the run's local folder. A copy is reused while its
  sidecar ``.NAME.gcs.json`` records the object's current generation and CRC32C.

The Google Cloud client (``gcs``) is imported only when a gs:// location is met.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DeepSegError
from ..core.progress import progress
from .paths import RunPaths
from .remote import UPLOAD_WORKERS, GsUri

if TYPE_CHECKING:
    from ..config import Experiment

log = logging.getLogger(__name__)


def cache_root(exp: Experiment) -> Path:
    """Where gs:// files are copied on this machine."""
    return exp.input.cache_dir or RunPaths.of(exp).root / ".cache"


def cached_copy(uri: GsUri, cache: Path) -> Path:
    """A verified local copy of ``uri`` under ``cache`` (downloaded only when new or changed)."""
    from . import gcs

    obj = gcs.stat(uri)
    if obj is None:
        raise DeepSegError(f"{uri}: not found in bucket {uri.bucket}; check the path")
    target = cache / uri.bucket / uri.key
    sidecar = target.with_name(f".{target.name}.gcs.json")
    record = {"uri": str(uri), "generation": obj.generation, "crc32c": obj.crc32c}
    if _reads(sidecar) == record and target.is_file() and target.stat().st_size == obj.size:
        return target
    log.info("download %s (%.1f MB) -> %s", uri, obj.size / 1e6, target)
    gcs.download(obj, target)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.partial")  # one per process
    tmp.write_text(json.dumps(record))
    os.replace(tmp, sidecar)
    return target


def _reads(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def local_file(exp: Experiment, location: Path | GsUri) -> Path:
    """A local path for a file named in the experiment (gs:// ones are copied to the cache)."""
    return cached_copy(location, cache_root(exp)) if isinstance(location, GsUri) else location


def readable_rasters(exp: Experiment) -> list[Path]:
    """``input.rasters`` as paths rasterio opens: local files, cached copies or /vsigs/ paths."""
    rasters = list(exp.input.rasters)
    remote = [r for r in rasters if isinstance(r, GsUri)]
    if not remote:
        return rasters
    if exp.input.cache_dir is None:
        from . import gcs

        for uri in {r.bucket: r for r in remote}.values():  # GDAL would only say "HTTP 403"
            gcs.stat(uri)
        gcs.gdal_environment()
        return [Path(r.vsi) if isinstance(r, GsUri) else r for r in rasters]
    cache = exp.input.cache_dir
    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        copies = pool.map(lambda uri: cached_copy(uri, cache), remote)
        local = dict(zip(remote, progress(copies, len(remote), "cache rasters", log), strict=True))
    return [local.get(r, r) if isinstance(r, GsUri) else r for r in rasters]

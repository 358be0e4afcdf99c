"""gs:// inputs made readable, and ``sync``: a run's scratch folder pushed to its bucket.

- Rasters (``input.rasters``): with no ``input.cache_dir`` GDAL reads each COG by window over
  the network (``/vsigs/``, same credentials, see ``gcs``); with one, each object is downloaded
  once into ``cache_dir/BUCKET/KEY`` (CRC32C-verified) and read locally.
- Other files (the model folder, ``grid.tile_list``) are always copied once into the cache:
  ``input.cache_dir``, else ``.cache/`` in the run's local folder. A copy is reused while its
  sidecar ``.NAME.gcs.json`` records the object's current generation and CRC32C.
- ``python -m deepseg.storage sync -e NAME [--dry-run]`` uploads every finished file of the
  scratch folder that the bucket lacks or holds differently (logs excepted: those the stages
  merge, so a differing log is reported, not overwritten).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import gcs
from .cli import run_stage
from .config import MODEL_FILES, Experiment
from .errors import DeepSegError
from .gcs import GsUri, RemoteObject
from .mirror import SYNC_FOLDERS, UPLOAD_WORKERS
from .outputs import RunPaths
from .progress import progress

log = logging.getLogger(__name__)


def cache_root(exp: Experiment) -> Path:
    """Where gs:// files are copied on this machine."""
    return exp.input.cache_dir or RunPaths.of(exp).root / ".cache"


def cached_copy(uri: GsUri, cache: Path) -> Path:
    """A verified local copy of ``uri`` under ``cache`` (downloaded only when new or changed)."""
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
        for uri in {r.bucket: r for r in remote}.values():  # GDAL would only say "HTTP 403"
            gcs.stat(uri)
        gcs.gdal_environment()
        return [Path(r.vsi) if isinstance(r, GsUri) else r for r in rasters]
    cache = exp.input.cache_dir
    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        copies = pool.map(lambda uri: cached_copy(uri, cache), remote)
        local = dict(zip(remote, progress(copies, len(remote), "cache rasters", log), strict=True))
    return [local.get(r, r) if isinstance(r, GsUri) else r for r in rasters]


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
    return {n: vars(gcs.file_checksums(folder / n)) for n in MODEL_FILES}


# ---- sync -----------------------------------------------------------------------------------
def _finished_here(root: Path) -> list[Path]:
    """Every finished file of the run folder (no partial files, no hidden cache)."""
    files = (p for p in root.rglob("*") if p.is_file())
    return sorted(p for p in files if not any(s.startswith(".") for s in p.relative_to(root).parts))


def sync_plan(paths: RunPaths) -> list[tuple[Path, str, RemoteObject | None]]:
    """(file, why, the bucket's object) for each file to upload: missing, corrupt or differing."""
    remote = gcs.list_objects(paths.remote)
    plan = []
    for path in _finished_here(paths.root):
        key = path.relative_to(paths.root).as_posix()
        obj = remote.get(key)
        if obj is None:
            plan.append((path, "missing in the bucket", None))
        elif not obj.intact:
            plan.append((path, "corrupt in the bucket", obj))
        elif obj.size != path.stat().st_size or obj.crc32c != gcs.file_checksums(path).crc32c:
            if key.partition("/")[0] in SYNC_FOLDERS:
                log.info("sync: %s differs; kept the bucket's (stages merge logs)", key)
            else:
                plan.append((path, "differs from the bucket", obj))
    return plan


def sync(exp: Experiment, dry_run: bool = False, **_: object) -> dict[str, int]:
    """Upload what the bucket lacks or holds differently; with ``dry_run`` only list it."""
    paths = RunPaths.of(exp)
    if paths.remote is None:
        raise DeepSegError(f"output.path is the local folder {paths.root}: nothing to sync")
    plan = sync_plan(paths)
    total = sum(p.stat().st_size for p, _, _ in plan)
    verb = "would upload" if dry_run else "upload"
    for path, why, _ in plan:
        print(f"{verb} {paths.show(path)} ({why}, {path.stat().st_size / 1e6:.2f} MB)")
    print(f"sync: {verb} {len(plan)} file(s), {total / 1e6:.2f} MB, from {paths.root}")
    if not dry_run and plan:

        def send(item: tuple[Path, str, RemoteObject | None]) -> RemoteObject:
            path, _, obj = item
            uri = paths.remote / path.relative_to(paths.root).as_posix()
            return gcs.upload(path, uri, obj.generation if obj else 0)

        with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            for _ in progress(pool.map(send, plan), len(plan), "sync: files", log):
                pass
    return {"files": len(plan), "bytes": total}


def main(argv: list[str] | None = None) -> None:
    """``python -m deepseg.storage sync -e NAME [--dry-run]``."""
    parser = argparse.ArgumentParser(prog="python -m deepseg.storage", description=__doc__)
    parser.add_argument("command", choices=["sync"])
    parser.add_argument("-e", "--experiment", required=True, help="experiment name or YAML path")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run_stage(sync, None, parser, argv)


if __name__ == "__main__":
    main()

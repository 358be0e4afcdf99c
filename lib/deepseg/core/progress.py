"""Progress lines with rate and ETA for long loops, and the log format of every stage."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr in one readable format (INFO by default, DEBUG with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # GDAL reports every recoverable error through rasterio's logger; DeepSeg turns the ones
    # that matter into its own one-line errors, so only rasterio's warnings are worth showing.
    for noisy in ("rasterio", "pyogrio", "fiona"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` for a duration in seconds."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(
    items: Iterable[T],
    total: int,
    what: str,
    logger: logging.Logger,
    every_s: float = 10.0,
) -> Iterator[T]:
    """Yield ``items``, logging ``done/total``, rate and ETA at most every ``every_s`` seconds.

    The first and last items are always reported, so short runs still show their pace.
    """
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if done == total or done == 1 or now - last >= every_s:
            last = now
            elapsed = now - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = (total - done) / rate if rate > 0 else 0.0
            logger.info(
                "%s %d/%d (%.0f%%), %.2f/s, elapsed %s, ETA %s",
                what,
                done,
                total,
                100.0 * done / max(total, 1),
                rate,
                format_seconds(elapsed),
                format_seconds(eta),
            )

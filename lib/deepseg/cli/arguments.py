"""The arguments every command shares, and running one with one-line errors.

A user error (``USER_ERRORS``) prints one line ``deepseg: error: ...`` and exits with status 2;
Ctrl-C, SIGTERM and SIGUSR1 print how to resume and exit with 128 + the signal; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, Experiment, load_experiment
from ..core.errors import DeepSegError
from ..core.progress import setup_logging
from ..core.stopping import Stopped, exit_status, stop_on_signals

USER_ERRORS = (ConfigError, DeepSegError)  # KeaError and gs:// errors are DeepSegErrors


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0 <= I < N) -> (I, N)."""
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return shard


def add_experiment(parser: argparse.ArgumentParser, force: bool = True) -> None:
    """``-e/--experiment``, ``-v/--verbose`` and (``force``) ``--force``."""
    parser.add_argument(
        "-e",
        "--experiment",
        required=True,
        help="an experiment name in experiments/ (e.g. demo) or a path to a YAML file",
    )
    if force:
        parser.add_argument("--force", action="store_true", help="redo work that is already done")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_units(parser: argparse.ArgumentParser) -> None:
    """``--shard`` and ``--tile-list``, for the stages that work through units."""
    parser.add_argument(
        "--shard",
        type=parse_shard,
        metavar="I/N",
        help="work only on share I of N (0-based): units I, I+N, ... of the sorted list, so N "
        "machines given 0/N .. N-1/N cover every unit exactly once",
    )
    parser.add_argument(
        "--tile-list",
        type=Path,
        metavar="CSV",
        help="only these tiles (tile_id,minx,miny,maxx,maxy); overrides grid.tile_list",
    )


def with_tile_list(exp: Experiment, tile_list: Path | None) -> Experiment:
    """``exp`` with ``grid.tile_list`` replaced by the command line's, checked to exist."""
    if tile_list is None:
        return exp
    path = tile_list.expanduser().resolve()
    if not path.is_file():
        raise DeepSegError(f"--tile-list: expected an existing CSV file, got {path}")
    return dataclasses.replace(exp, grid=dataclasses.replace(exp.grid, tile_list=path))


def guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``: a user error exits 2 with one line; Ctrl-C exits 130, SIGTERM 143 and
    SIGUSR1 138 (``core.stopping``), each saying how to resume."""
    try:
        with stop_on_signals():
            return action()
    except USER_ERRORS as exc:
        logging.getLogger("deepseg").debug("user error", exc_info=True)
        print(f"deepseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        what = str(exc) if isinstance(exc, Stopped) else "interrupted"
        print(f"deepseg: {what}; rerun the same command to resume", file=sys.stderr)
        sys.exit(exit_status(exc))


def run_with_experiment(
    function: Callable[..., Any], args: dict[str, Any], check_inputs: bool = True
) -> Any:
    """Set up logging, load ``args["experiment"]`` and call ``function(exp, **other args)``.

    ``check_inputs=False``: see ``config.load.load_experiment``.
    """
    setup_logging(args.pop("verbose", False))
    name, tile_list = args.pop("experiment"), args.pop("tile_list", None)

    def call() -> Any:
        exp = with_tile_list(load_experiment(name, check_inputs=check_inputs), tile_list)
        return function(exp, **args)

    return guarded(call)

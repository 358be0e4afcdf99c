"""The command line every stage script shares: ``python STAGE.py -e EXPERIMENT [options]``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .config import ConfigError, Experiment, load_experiment
from .errors import DeepSegError
from .kea import KeaError
from .progress import setup_logging

USER_ERRORS = (ConfigError, DeepSegError, KeaError)


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


def stage_parser(description: str | None, units: bool = True) -> argparse.ArgumentParser:
    """The arguments common to all stages; ``units``: also --shard and --tile-list, for the
    stages that work through units (chunks or regions)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "-e",
        "--experiment",
        required=True,
        help="an experiment name in experiments/ (e.g. demo) or a path to a YAML file",
    )
    parser.add_argument("--force", action="store_true", help="redo work that is already done")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if units:
        _add_unit_arguments(parser)
    return parser


def _add_unit_arguments(parser: argparse.ArgumentParser) -> None:
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


def run_stage(
    stage: Callable[..., object],
    description: str | None,
    parser: argparse.ArgumentParser | None = None,
    argv: list[str] | None = None,
    check_inputs: bool = True,
) -> None:
    """Parse arguments, load the experiment, run ``stage(exp, force=, shard=, **extra)``.

    A user error prints one line ``deepseg: error: ...`` and exits with status 2.
    ``check_inputs=False``: see ``config.load_experiment``.
    """
    parser = parser or stage_parser(description)
    args = vars(parser.parse_args(argv))
    setup_logging(args.pop("verbose"))
    name, tile_list = args.pop("experiment"), args.pop("tile_list", None)
    try:
        exp = with_tile_list(load_experiment(name, check_inputs=check_inputs), tile_list)
        stage(exp, **args)
    except USER_ERRORS as exc:
        logging.getLogger("deepseg").debug("user error", exc_info=True)
        print(f"deepseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("deepseg: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)

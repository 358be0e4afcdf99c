"""The command line every stage script shares: ``python STAGE.py -e EXPERIMENT [--force]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .config import ConfigError, load_experiment
from .errors import DeepSegError
from .kea import KeaError
from .progress import setup_logging

USER_ERRORS = (ConfigError, DeepSegError, KeaError)


def stage_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments common to all stages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "-e",
        "--experiment",
        required=True,
        help="an experiment name in experiments/ (e.g. demo) or a path to a YAML file",
    )
    parser.add_argument("--force", action="store_true", help="redo work that is already done")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run_stage(
    stage: Callable[..., object],
    description: str | None,
    parser: argparse.ArgumentParser | None = None,
    argv: list[str] | None = None,
    check_inputs: bool = True,
) -> None:
    """Parse arguments, load the experiment, run ``stage(exp, force=..., **extra)`` and exit.

    A user error prints one line ``deepseg: error: ...`` and exits with status 2.
    ``check_inputs=False``: see ``config.load_experiment``.
    """
    parser = parser or stage_parser(description)
    args = vars(parser.parse_args(argv))
    setup_logging(args.pop("verbose"))
    name = args.pop("experiment")
    try:
        exp = load_experiment(name, check_inputs=check_inputs)
        stage(exp, **args)
    except USER_ERRORS as exc:
        logging.getLogger("deepseg").debug("user error", exc_info=True)
        print(f"deepseg: error: {exc}", file=sys.stderr)
        sys.exit(2)

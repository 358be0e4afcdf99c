"""``deepseg COMMAND [options]``: every stage and tool behind one console command.

Each command names its function as ``"module:function"`` under ``deepseg``, imported only when
that command runs (so ``deepseg sync`` does not load torch, nor ``deepseg predict`` the Google
Cloud client for a local run). The top-level scripts (``create_tiles.py``, ``predict.py``, ...)
call ``run_command`` with their command; ``bash DeepSeg.sh`` calls the scripts.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arguments import add_experiment, add_units, guarded, run_with_experiment


@dataclass(frozen=True)
class Command:
    """One subcommand: what it runs, what it says, which shared arguments it takes."""

    target: str  # "module:function" under deepseg; called as function(exp, **options)
    help: str
    units: bool = False  # --shard and --tile-list
    force: bool = True  # --force
    check_inputs: bool = True  # False: the experiment's inputs need not exist (train)
    options: Callable[[argparse.ArgumentParser], None] | None = None
    experiment: bool = True  # False: no -e (the function takes the options alone)


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, help="reference polygons (GPKG, GeoJSON, SHP)")
    parser.add_argument("--reference-layer", help="layer of --reference (default: the first)")
    parser.add_argument("--aoi", type=Path, help="polygons bounding the evaluated area")
    parser.add_argument("--iou", type=float, help="IoU for a polygon match (default 0.25)")
    parser.add_argument("--beta", type=float, help="F-beta for --calibrate (default 0.5)")
    parser.add_argument(
        "--calibrate", action="store_true", help="write the best F-beta threshold to logs/"
    )


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, help="model folder to write instead of train.output")


def _sync_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")


def _demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="remake files that exist")
    parser.add_argument(
        "--root", dest="repo_root", type=Path, default=Path.cwd(), help="the DeepSeg checkout"
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="also train.py's scenes as files (data/demo/training)",
    )


COMMANDS: dict[str, Command] = {
    "tiles": Command(
        "stages.tiles:create_tiles", "stage 1: stage the tile grid, one store per chunk", True
    ),
    "predict": Command("stages.predict:predict", "stage 2: predict every staged tile", True),
    "merge": Command("stages.merge:merge", "stage 3: merge predictions into region COGs", True),
    "vectorize": Command("stages.vectorize:vectorize", "stage 4: polygons of the maps", True),
    "evaluate": Command(
        "qa.evaluate:evaluate",
        "score a run against reference polygons",
        options=_evaluate_options,
    ),
    "check": Command(
        "cli.commands:check_and_exit", "check a run's outputs against its grid", force=False
    ),
    "summary": Command("cli.commands:print_summary", "print a run's short report", force=False),
    "sync": Command(
        "storage.sync:sync",
        "upload a gs:// run's scratch folder",
        force=False,
        options=_sync_options,
    ),
    "training-data": Command(
        "stages.training_data:create_training_data",
        "stage your rasters and label polygons into one training store",
        check_inputs=False,
    ),
    "train": Command(
        "cli.commands:train_model",
        "train the U-Net on the training store (train.rasters set) or on generated scenes",
        check_inputs=False,
        options=_train_options,
    ),
    "crossval": Command(
        "training.crossval:crossval",
        "k-fold spatial cross-validation on the training store (one unit per fold)",
        True,
        check_inputs=False,
    ),
    "demo-data": Command(
        "synthetic.demo:ensure_demo",
        "make the demo scene and reference where absent",
        experiment=False,
        options=_demo_options,
    ),
}


def train_model(exp: Any, force: bool = False, output: Path | None = None) -> dict[str, Any]:
    """``deepseg train``: on the training store when ``train.rasters`` is set (your imagery,
    ``create_training_data.py``), else on generated scenes (the demo's model)."""
    if exp.train.rasters:
        from ..training.from_store import train_from_store

        return train_from_store(exp, force=force, output=output)
    from ..synthetic.training import train

    return train(exp, force=force, output=output)


def check_and_exit(exp: Any, **_: object) -> dict[str, Any]:
    """``deepseg check``: exit with status 1 when anything is reported."""
    from ..qa.check import check

    report = check(exp)
    if not report["ok"]:
        sys.exit(1)
    return report


def print_summary(exp: Any, **_: object) -> str:
    """``deepseg summary``: print the run's report."""
    from ..qa.summary import summarize

    text = summarize(exp)
    print(text)
    return text


def _function(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(f"deepseg.{module}"), name)


def _fill(parser: argparse.ArgumentParser, command: Command) -> None:
    if command.experiment:
        add_experiment(parser, command.force)
    if command.units:
        add_units(parser)
    if command.options is not None:
        command.options(parser)


def _run(command: Command, args: dict[str, Any]) -> Any:
    if not command.experiment:
        from ..core.progress import setup_logging

        setup_logging()
        return guarded(lambda: _function(command.target)(**args))
    return run_with_experiment(_function(command.target), args, command.check_inputs)


def run_command(
    name: str, argv: list[str] | None = None, prog: str | None = None, description: str = ""
) -> Any:
    """Parse ``argv`` (default: the command line) as the options of command ``name``, run it;
    ``description`` (a script's docstring) is what ``--help`` says first."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=prog, description=description or command.help)
    _fill(parser, command)
    return _run(command, vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None, prog: str = "deepseg") -> Any:
    """``deepseg COMMAND [options]`` (the console script; also ``python -m deepseg.cli``)."""
    about = "DeepSeg: every stage and tool as one command (COMMAND --help for its options)"
    parser = argparse.ArgumentParser(prog=prog, description=about)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        _fill(commands.add_parser(name, help=command.help, description=command.help), command)
    args = vars(parser.parse_args(argv))
    return _run(COMMANDS[args.pop("command")], args)


def console_script() -> None:
    """The ``deepseg`` console script: ``main`` with exit status 0 on success (a returned
    summary would be taken for an error status); errors exit 2 from ``main`` itself."""
    main()

#!/usr/bin/env python
"""Train the built-in U-Net on generated scenes and write a model folder (experiment's train:).

Writes train.output (default OUTPUT/model), or --output DIR. Example: python train.py -e demo
"""

from pathlib import Path

from deepseg.cli import run_stage, stage_parser
from deepseg.training import train

if __name__ == "__main__":
    parser = stage_parser(__doc__, units=False)
    parser.add_argument("--output", type=Path, help="model folder to write instead of train.output")
    run_stage(train, __doc__, parser, check_inputs=False)

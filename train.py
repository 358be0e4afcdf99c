#!/usr/bin/env python
"""Train the built-in U-Net on generated scenes and write a model folder (experiment's train:).

Writes train.output (default OUTPUT/model), or --output DIR. Example: python train.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("train", prog="train.py", description=__doc__)

#!/usr/bin/env python
"""Train the built-in U-Net and write a model folder: on the training store of train.rasters
(create_training_data.py) when they are set, else on generated scenes (the demo model).

Writes train.output (default OUTPUT/model), or --output DIR. Example: python train.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("train", prog="train.py", description=__doc__)

#!/usr/bin/env python
"""Stage train.rasters and train.labels into one training store (HDF5) with its statistics.

Writes train.store (default OUTPUT/training/tiles.h5) and normalization_stats.json beside it.
Example: python create_training_data.py -e peel
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("training-data", prog="create_training_data.py", description=__doc__)

#!/usr/bin/env python
"""Stage 1: build the tile grid over the input rasters and stage it, one HDF5 (KEA) store per chunk.

Writes OUTPUT/tiles/{chunk}.kea. Example: python create_tiles.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("tiles", prog="create_tiles.py", description=__doc__)

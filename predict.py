#!/usr/bin/env python
"""Stage 2: predict every staged tile and write one probability store per chunk.

Reads OUTPUT/tiles/, writes OUTPUT/predictions/{chunk}.kea. Example: python predict.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("predict", prog="predict.py", description=__doc__)

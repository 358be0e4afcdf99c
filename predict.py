#!/usr/bin/env python
"""Stage 2: predict every staged tile and write one probability store per chunk.

Reads OUTPUT/tiles/, writes OUTPUT/predictions/{chunk}.kea. Example: python predict.py -e demo
"""

from deepseg.cli import run_stage
from deepseg.predicting import predict

if __name__ == "__main__":
    run_stage(predict, __doc__)

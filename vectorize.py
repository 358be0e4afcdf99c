#!/usr/bin/env python
"""Stage 4: turn the merged binary maps into polygons with their measurements.

Writes OUTPUT/vectors/rts_predictions.gpkg. Example: python vectorize.py -e demo
"""

from deepseg.cli import run_stage
from deepseg.polygons import vectorize

if __name__ == "__main__":
    run_stage(vectorize, __doc__)

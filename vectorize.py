#!/usr/bin/env python
"""Stage 4: turn the merged binary maps into polygons with their measurements.

Writes OUTPUT/vectors/rts_predictions.gpkg. Example: python vectorize.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("vectorize", prog="vectorize.py", description=__doc__)

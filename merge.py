#!/usr/bin/env python
"""Stage 3: merge the probability stores into per-region Cloud-Optimized GeoTIFFs.

Writes OUTPUT/merged/{region}_prob.tif and {region}_binary.tif. Example: python merge.py -e demo
"""

from deepseg.cli.commands import run_command

if __name__ == "__main__":
    run_command("merge", prog="merge.py", description=__doc__)

"""``python -m deepseg.cli COMMAND [options]``: the same as the ``deepseg`` console script."""

from .commands import main

main()

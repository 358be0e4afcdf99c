"""``python -m deepseg.cli COMMAND [options]``: the same as the ``deepseg`` console script."""

from .commands import main

if __name__ == "__main__":  # not again in processes the local executor spawns
    main()

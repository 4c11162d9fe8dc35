"""`python -m kerasae COMMAND ...`: the `kerasae` command (see kerasae.cli.main)."""

import sys

from kerasae.cli.main import main

if __name__ == "__main__":
    sys.exit(main(prog="kerasae"))

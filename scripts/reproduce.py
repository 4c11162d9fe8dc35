#!/usr/bin/env python
"""Reproduce the published results and figures, e.g. `python scripts/reproduce.py --quick` (all flags: --help)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from kerasae.cli import reproduce_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(reproduce_main())

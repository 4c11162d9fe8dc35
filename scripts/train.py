#!/usr/bin/env python
"""Train a kerasae model, e.g. `python scripts/train.py --arch vae` (all flags: --help)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from kerasae.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())

#!/usr/bin/env python
"""Evaluate a training run, e.g. `python scripts/evaluate.py runs/vae-mlp --k 5000` (all flags: --help)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from kerasae.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main())

#!/usr/bin/env python
"""Train the learned codec's quality ladder on the offline photographs (kerasae.codec.training; --help)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasae.cli.startup import start_tensorflow  # noqa: E402

start_tensorflow()  # TensorFlow's start-up lines held back (kerasae.codec.training imports it)
from kerasae.codec.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

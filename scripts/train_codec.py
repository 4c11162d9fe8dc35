#!/usr/bin/env python
"""Train the learned codec's quality ladder on the offline photographs (kerasae.codec.training; --help)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasae.codec.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

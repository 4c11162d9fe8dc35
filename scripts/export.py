#!/usr/bin/env python
"""Export a kerasae run as a SavedModel plus TFLite files, e.g.
`python scripts/export.py runs/vae-mlp --name vae` (all flags: --help), or check one:
`python scripts/export.py --verify exported/vae`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from kerasae.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())

#!/usr/bin/env python
"""Convert a dataset into TFRecord shards for streaming, e.g.
`python scripts/convert.py images:photos/ data/photos` then `train.py --dataset tfrecord:data/photos`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from kerasae.cli import convert_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(convert_main())

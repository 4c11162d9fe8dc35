"""TensorFlow's start on the command line, its start-up chatter filtered (`kerasae._stderr`).

The commands set TF_CPP_MIN_LOG_LEVEL to 2 unless the user did (`kerasae.cli.main`), which TensorFlow 2.21's
import-time absl lines ignore; each command calls `start_tensorflow` before it first needs TensorFlow.
"""

import sys

from kerasae import _stderr


def start_tensorflow():
    """Import TensorFlow and start its device platforms with file descriptor 2 captured; write back what
    `_stderr.filter_chatter` keeps at TF_CPP_MIN_LOG_LEVEL (all of it if the import fails).

    Listing the physical devices starts the platforms (CUDA's cuInit) without fixing the device configuration:
    CPU replicas (`kerasae.distribute`) can still be set up after it. A no-op where TensorFlow is already
    imported (a command called from Python)."""
    if "tensorflow" in sys.modules:
        return
    level = _stderr.min_log_level()
    with _stderr.quiet_fd2(keep=lambda text: _stderr.filter_chatter(text, level)):
        import tensorflow as tf

        tf.config.list_physical_devices()

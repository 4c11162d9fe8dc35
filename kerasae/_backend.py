"""Pin Keras to the TensorFlow backend before anything imports keras.

kerasae is built on tf.distribute, tf.data, SavedModel and TFLite, so it needs the
TensorFlow backend. Importing this module first makes `import kerasae` work in a
fresh interpreter without the user exporting KERAS_BACKEND.
"""

import os
import sys

_BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if _BACKEND != "tensorflow":
    raise ImportError(
        f"kerasae needs the TensorFlow Keras backend, but KERAS_BACKEND={_BACKEND!r}. "
        "Unset it or set KERAS_BACKEND=tensorflow."
    )
if "keras" in sys.modules:  # keras was imported before us: check what it picked
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"keras was already imported with the {keras.backend.backend()!r} backend; "
            "kerasae needs 'tensorflow' (import kerasae first or set KERAS_BACKEND=tensorflow)."
        )

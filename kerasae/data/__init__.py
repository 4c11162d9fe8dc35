"""Datasets for the autoencoders: sources, in memory or streamed, and the one tf.data input pipeline.

Every source gives float32 images [N, H, W, C] in [0, 1]: in memory as an `ImageData` of arrays, or
streamed as a `StreamedData` of `Split`s read and decoded while training (image folders, TFRecord
shards, tfds). MNIST ships with the package (checksummed) so the default path works offline.
`make_dataset` turns either into training batches, so models, losses and figures never care where
the pixels came from.
"""

from kerasae import _backend  # noqa: F401

from kerasae.data.arrays import (TEST_BINARIZATION_SEED, DataError, ImageData, binarize,  # noqa: F401
                                 split_validation)
from kerasae.data.folders import DEFAULT_FOLDER_IMAGE_SIZE, IMAGE_EXTENSIONS  # noqa: F401
from kerasae.data import labels  # noqa: F401
from kerasae.data.labels import StreamLabels, num_classes  # noqa: F401
from kerasae.data.idx import load_mnist, read_idx  # noqa: F401
from kerasae.data.pipeline import make_dataset, num_batches  # noqa: F401
from kerasae.data.sources import SPEC_FORMS, load_dataset, open_dataset  # noqa: F401
from kerasae.data.streams import IN_MEMORY_LIMIT_BYTES, Split, StreamedData  # noqa: F401
from kerasae.data.tfrecord import write_tfrecords  # noqa: F401
from kerasae.data.tuning import untuned, untuned_options  # noqa: F401
from kerasae.options import COLOR_MODES  # noqa: F401  (re-exported)

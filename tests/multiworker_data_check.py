"""Run by test_multiworker.py as one of two workers of a MultiWorkerMirroredStrategy on 127.0.0.1 (TF_CONFIG):
read epochs of a streamed image folder (or TFRecord shards) through training's per-worker input pipeline and
print, as JSON, the images this worker got in each step (each image's pixel value is its index).

`multiworker_data_check.py DIR|tfrecord:DIR BATCH EPOCHS`
"""

import json
import sys

from kerasae import distribute

strategy = distribute.get_strategy("multiworker")  # first: it must precede other TF work

import numpy as np  # noqa: E402

from kerasae import data  # noqa: E402
from kerasae.training.core import input_pipeline  # noqa: E402

folder, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = folder if folder.startswith("tfrecord:") else f"images:{folder}"
split = data.open_dataset(spec, mode="stream", log=lambda *a: None).train
dataset = strategy.distribute_datasets_from_function(
    input_pipeline(batch, True, split, shuffle=True, seed=0))
seen = []
for _ in range(epochs):
    steps = []
    for batch_images in dataset:
        (local,) = strategy.experimental_local_results(batch_images)
        steps.append(np.round(local.numpy()[:, 0, 0, 0] * 255).astype(int).tolist())
    seen.append(steps)
print(json.dumps({"workers": distribute.num_workers(strategy), "epochs": seen}))

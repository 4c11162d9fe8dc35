"""tf.data's autotuning off for every dataset kerasae iterates, and why.

With autotuning on (tf.data's default), deleting an iterator waits for the autotuning thread's next wake-up, and
that thread wakes 10 ms, 20 ms, 40 ms, ... after the iterator starts (the period doubles up to a minute). So a
`fit`, `evaluate` or loop over `as_numpy_iterator()` returns only at the next such mark: up to twice its own time,
with the cores idle meanwhile (TF 2.21; `benchmarks/fit_stalls.py` measures it, docs/performance.md has the
numbers). Without the autotuner, a map with `num_parallel_calls=AUTOTUNE` runs as many calls at once as there are
cores.
"""

import tensorflow as tf


def untuned_options(options=None):
    """`options` (or new tf.data.Options) with autotuning off."""
    options = tf.data.Options() if options is None else options
    options.autotune.enabled = False
    return options


def untuned(ds):
    """`ds` with tf.data's autotuning off (see the module docstring)."""
    return ds.with_options(untuned_options())

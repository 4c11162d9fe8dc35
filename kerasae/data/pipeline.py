"""The input pipeline: `make_dataset` turns in-memory images or a streamed `Split` into float32 batches
[B, H, W, C], shuffled per epoch, dynamically binarized for Bernoulli models, and split between workers.
"""

import numpy as np
import tensorflow as tf

from kerasae.data.arrays import DataError, as_labels
from kerasae.data.labels import StreamLabels, check_in_graph
from kerasae.data.streams import Split
from kerasae.data.tuning import untuned_options

_BINARIZE_LEVELS = 2**16
#: Records (TFRecord, tfds) are shuffled through a buffer of this many encoded images; image files and
#: arrays are permuted exactly, by index.
RECORD_SHUFFLE_BUFFER = 10_000


def make_dataset(x, batch_size: int, *, shuffle: bool = False, binarize: bool = False, seed: int | None = None,
                 repeat: bool = False, fixed_binarization_seed: int | None = None,
                 num_workers: int = 1, worker_index: int = 0, labels=None) -> tf.data.Dataset:
    """Float32 batches [B, H, W, C] of `x`, a numpy array or a streamed `Split`.

    Autoencoders need no labels; conditional models do: `labels` (an int array [N] for arrays, True
    for a `Split`, which carries its own) makes every element (images, int32 labels [B]). For a `Split`,
    a `StreamLabels(num_classes, split)` instead of True also checks every label in the graph: one
    outside [0, num_classes) stops the stream with an error naming the split, the value and the file.

    `shuffle` reshuffles every epoch (reproducibly given `seed`). `binarize` draws fresh Bernoulli
    pixels per batch every epoch (dynamic binarization regularizes Bernoulli VAEs); the per-batch
    seeds come from `Dataset.random`, which is re-randomized on each iteration, so a fixed global/op
    seed does not freeze the bits across epochs. `fixed_binarization_seed` binarizes a stream the
    same way on every pass (validation and test of streamed data; arrays are binarized beforehand).

    Arrays are auto-sharded by DATA under tf.distribute. A `Split` read by several workers
    (`num_workers` > 1, from a tf.distribute.InputContext) is cut per global batch: worker w takes
    items w, w + W, ... of each batch of `batch_size`, so every worker runs the same number of steps and
    each image file is opened by exactly one worker once per epoch (records are read by every worker and
    decoded by one). Shuffled record shards (TFRecord shards, tfds shard files), when there are enough of them,
    are shared by file instead: each worker reads only the shards dealt to it (see `_deal_shards`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= worker_index < num_workers or batch_size < num_workers:
        raise ValueError(f"worker_index must be in [0, num_workers) and batch_size ({batch_size}) at least "
                         f"num_workers ({num_workers}), got worker_index {worker_index}")
    if isinstance(x, Split):
        streamed_labels = labels is True or isinstance(labels, StreamLabels)
        if labels is not None and (not streamed_labels or not x.has_labels):
            raise DataError("labels: a streamed split yields its own labels (labels=True), and this one has none"
                            if streamed_labels else f"labels: pass True for a streamed split, got {type(labels)}")
        ds = _split_batches(x, batch_size, shuffle, seed, repeat, num_workers, worker_index, binarize,
                            labels)
    else:
        x = np.asarray(x, np.float32)
        if labels is not None:
            labels = as_labels(labels, "labels")
            if labels is None or len(labels) != len(x):
                raise DataError(f"labels: expected one integer label per image ({len(x)}), got "
                                f"{None if labels is None else len(labels)}")
        ds = _array_batches(x, batch_size, shuffle, seed, repeat, binarize, labels)
    if binarize:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda batch, s: _on_images(batch, _binarize_batch, s),
                                                num_parallel_calls=tf.data.AUTOTUNE)
    elif fixed_binarization_seed is not None:
        # Seeded by the batch's position in its epoch, so that every pass of a repeated stream gets the same bits.
        per_epoch = max(1, num_batches(len(x), batch_size, num_workers if isinstance(x, Split) else 1))
        ds = ds.enumerate().map(lambda i, batch: _on_images(
            batch, lambda images, s: _binarize_batch(images * _BINARIZE_LEVELS, s),
            i % per_epoch + fixed_binarization_seed * 1_000_003), num_parallel_calls=tf.data.AUTOTUNE)
    options = untuned_options()  # no idle wait when Keras drops the iterator (kerasae.data.tuning)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if isinstance(x, Split) else tf.data.experimental.AutoShardPolicy.DATA)
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _on_images(batch, fn, *args):
    """fn(images, *args) of a batch that is images or (images, labels)."""
    if isinstance(batch, tuple):
        return fn(batch[0], *args), batch[1]
    return fn(batch, *args)


def _array_batches(images, batch_size, shuffle, seed, repeat, binarize, labels=None):
    # Binarizing keeps the pixels scaled to [0, 2**16]: see _binarize_batch.
    images = tf.constant(images * np.float32(_BINARIZE_LEVELS) if binarize else images)
    # Shuffle and batch indices, then gather each batch in one op (the same order as shuffling
    # the images): per-image elements cost the binarizing pipeline ~20% more CPU time, which a
    # 2-core machine takes from training.
    ds = tf.data.Dataset.range(len(images))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    if labels is None:
        return ds.map(lambda index: tf.gather(images, index), num_parallel_calls=tf.data.AUTOTUNE)
    labels = tf.constant(labels.astype(np.int32))
    return ds.map(lambda index: (tf.gather(images, index), tf.gather(labels, index)),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _split_batches(split, batch_size, shuffle, seed, repeat, num_workers, worker_index, binarize, with_labels):
    """Batches of a streamed split; `with_labels`: None, True or a StreamLabels (labels checked in the graph)."""
    if split.count < num_workers:
        raise ValueError(f"{split.count} images cannot be shared by {num_workers} workers")
    dealt = _deal_shards(split, batch_size, num_workers) if num_workers > 1 and shuffle and split.shards else None
    own_shards = dealt is not None
    items = None if own_shards else split.encoded()
    if own_shards:
        ds = _own_shard_batches(split, dealt[worker_index], batch_size, seed, repeat, num_workers, worker_index)
    elif split.paths is not None and shuffle:
        # An exact permutation per epoch, drawn from a re-randomized seed stream (identical on every
        # worker given the same seed); an infinite stream of epochs when repeating.
        count = split.count
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        seeds = seeds if repeat else seeds.take(1)
        paths = tf.constant(split.paths.astype(str))
        labels = tf.constant(split.labels if split.labels is not None else np.full(count, -1, np.int64))

        def epoch(s):
            order = tf.argsort(tf.random.stateless_uniform([count], tf.stack([s, tf.constant(0, tf.int64)])))
            perm = tf.data.Dataset.from_tensor_slices(order).map(lambda i: (tf.gather(paths, i), tf.gather(labels, i)))
            return _batch(perm, batch_size, count, num_workers)

        ds = seeds.flat_map(epoch)
    else:
        if shuffle:
            items = items.shuffle(min(split.count, RECORD_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        ds = _batch(items, batch_size, split.count, num_workers)
        if repeat:
            ds = ds.repeat()
    if num_workers > 1 and not own_shards:
        ds = ds.map(lambda item, label: (item[worker_index::num_workers], label[worker_index::num_workers]))
    decode, shape = split.decode_fn(), split.image_shape
    scale = float(_BINARIZE_LEVELS) if binarize else 1.0
    check = with_labels if isinstance(with_labels, StreamLabels) else None

    def decode_batch(item, label):
        if check is not None:
            label = check_in_graph(label, item, check, split.paths is not None)
        images = tf.map_fn(decode, item, fn_output_signature=tf.TensorSpec(shape, tf.float32))
        images = images * scale if binarize else images
        return (images, tf.cast(label, tf.int32)) if with_labels else images

    ds = ds.map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if not repeat:  # known to Keras (progress bar, steps per execution) although filters and windows hide it
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches(split.count, batch_size, num_workers)))
    return ds


#: Shards are dealt to workers only if each then holds at least this fraction of its share of an epoch's records.
MIN_WORKER_SHARE = 0.75


def _deal_shards(split, batch_size, num_workers):
    """Each worker's shards (pieces of them in the split, see Split.pieces), dealt largest first to the worker
    with the fewest records (the same on every worker), or None where there are fewer shards than workers or a
    worker would hold under MIN_WORKER_SHARE of its share of an epoch (it would repeat its records more often
    than the others theirs)."""
    pieces = split.pieces()
    if len(pieces) < num_workers:
        return None
    dealt, totals = [[] for _ in range(num_workers)], [0] * num_workers
    for piece in sorted(pieces, key=lambda p: (-p[2], p[3])):
        worker = totals.index(min(totals))
        dealt[worker].append(piece)
        totals[worker] += piece[2]
    steps = num_batches(split.count, batch_size, num_workers)
    shares = [batch_size // num_workers + (w < batch_size % num_workers) for w in range(num_workers)]
    if any(total < MIN_WORKER_SHARE * steps * share for total, share in zip(totals, shares)):
        return None
    return [sorted(own, key=lambda p: p[3]) for own in dealt]


def _own_shard_batches(split, pieces, batch_size, seed, repeat, num_workers, worker_index):
    """Worker `worker_index`'s training batches from its own `pieces` of record shards only, in a seeded order
    reshuffled every epoch, through the record shuffle buffer. An epoch is the split's steps of this worker's
    share of each global batch; its records repeat as a stream, so a worker with fewer records than its share
    starts its shards again, and one with more leaves the rest of a pass to the next epoch."""
    own = sum(size for _, _, size, _ in pieces)
    share = batch_size // num_workers + (worker_index < batch_size % num_workers)
    items = split.read_pieces(pieces, shuffle=True, seed=seed)
    items = items.shuffle(min(own, RECORD_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    ds = items.repeat().batch(share)
    return ds if repeat else ds.take(num_batches(split.count, batch_size, num_workers))


def _batch(items, batch_size, count, num_workers):
    """Batches of `batch_size`; a last batch too small to give every worker an image joins the one before."""
    tail = count % batch_size
    if num_workers == 1 or tail == 0 or tail >= num_workers or count <= batch_size:
        return items.batch(batch_size)
    last = count // batch_size - 1  # index of the batch that absorbs the tail

    def key(i, item):
        return tf.minimum(i // batch_size, last)

    def window(k):
        return tf.where(k == last, tf.constant(batch_size + tail, tf.int64), tf.constant(batch_size, tf.int64))

    grouped = items.enumerate().group_by_window(key, lambda k, d: d.batch(batch_size + tail), window_size_func=window)
    return grouped.map(lambda i, item: item)


def num_batches(count, batch_size, num_workers=1):
    """The number of batches `make_dataset` yields per epoch for `count` images."""
    tail = count % batch_size
    if num_workers > 1 and 0 < tail < num_workers and count > batch_size:
        return count // batch_size
    return -(-count // batch_size)


def _binarize_batch(scaled, seed):
    """One vectorized, stateless Bernoulli draw for a batch of pixels x given as x * 2**16.

    A pixel is 1 when a uniform 16-bit integer r < x * 2**16: P = ceil(x * 2**16) / 2**16, so
    0 and 1 stay exact and other values are within 2**-16 (finer than 8-bit pixels' 1/255).
    Half the random bits of a float draw per pixel: ~25% less pipeline CPU, which the
    training step on a 2-core machine gets back.
    """
    size = tf.size(scaled)
    bits = tf.random.stateless_uniform([(size + 1) // 2], seed=tf.stack([seed, tf.constant(0, tf.int64)]),
                                       minval=None, maxval=None, dtype=tf.uint32)
    r = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]
    return tf.cast(tf.reshape(tf.cast(r, tf.float32), tf.shape(scaled)) < scaled, tf.float32)

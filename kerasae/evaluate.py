"""Evaluation: the numbers behind kerasae's claims, in nats, dB and bytes.

Conventions (so every figure is reproducible and comparable with the literature):
- Bernoulli models are scored on a fixed stochastic binarization of the test images
  (`training.evaluation_images`, seed `TEST_BINARIZATION_SEED`): the dynamic
  binarization protocol of Burda et al. (2015) with the test set binarized once.
- Likelihoods are in nats per image; MSE is per pixel; PSNR is per image, averaged, in dB
  with peak 1.0 (pixels in [0, 1]). Discretized-logistic VAEs also get bits per dimension
  (nats / (H * W * C * ln 2)), the usual unit for likelihoods of 8-bit images.
"""

import hashlib
import json
import math
import time
from pathlib import Path

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae import data as data_lib
from kerasae import training as train_lib
from kerasae.config import reopen_options
from kerasae.files import atomic_path, load_keras_model, write_json
from kerasae.losses import bits_per_dim
from kerasae.models.base import check_positive_int, draw_rows
from kerasae.models.dae import apply_noise
from kerasae.running import (RunningMoments, TestImages, _reconstruction_result,  # noqa: F401 (re-exported)
                             _reconstruction_sums, as_test_images, codes, psnr, reconstruct, reconstruction_metrics,
                             reconstruction_metrics_of)

#: Per run directory: VAE evaluations already done (see evaluate_vae's `cache`).
EVALUATION_CACHE = "evaluation-cache.json"
#: Burda et al.'s active-unit threshold on Cov_x(E_q[z_d | x]).
ACTIVE_UNIT_THRESHOLD = 0.01


def load_model(run_dir):
    """The run's best model on validation (best.keras), else its final one; integrity-checked, Keras safe mode.

    A truncated, corrupted or unsafe file raises `kerasae.files.ModelFileError` naming it.
    """
    run_dir = Path(run_dir)
    path = run_dir / "best.keras" if (run_dir / "best.keras").exists() else run_dir / "model.keras"
    return load_keras_model(path)


#: Training images (the first of the run's training split) that baselines such as PCA fit on, when the
#: run's data is streamed rather than held in memory.
MAX_BASELINE_TRAIN_IMAGES = 20_000


def run_data(run_dir, stream_test=False):
    """The run's dataset (same slice as in training): (ImageData, training images without validation).

    Streamed data is decoded here: its test split (all of it, or --max-test-samples) and at most
    MAX_BASELINE_TRAIN_IMAGES training images; with `stream_test` its test split stays streamed (a
    `StreamedData` whose test split `TestImages` reads a batch at a time).
    """
    recorded = json.loads((Path(run_dir) / "config.json").read_text())
    fields = train_lib.TrainConfig.__dataclass_fields__  # a newer run's config may carry more
    config = train_lib.TrainConfig(**{k: v for k, v in recorded["train"].items() if k in fields})
    image_size, color_mode = reopen_options(recorded)  # as training opened it (the conversion init_from implied)
    data = data_lib.open_dataset(config.dataset, data_dir=config.data_dir, image_size=image_size,
                                 color_mode=color_mode, mode=config.data_mode,
                                 skip_bad_images=config.skip_bad_images, log=lambda *a: None)
    data = data.take(config.max_train_samples, config.max_test_samples)
    val = config.validation_size if config.validation_size is not None else min(5000, data.num_train // 10)
    x_train = data.split_validation(val)[0]
    if data.streamed:
        x_train = x_train.head(MAX_BASELINE_TRAIN_IMAGES).to_arrays()[0]
        data = data.take(1) if stream_test else data.take(1).to_memory()  # one training image; test split whole
    return data, x_train


# ---- VAEs -------------------------------------------------------------------------------------

def _log_weights_fn(model):
    """A compiled (inputs, eps [s, B, D]) -> log p(x, z_s) - log q(z_s | x) [s, B] for s samples; inputs are the
    images, or a conditional model's (images, labels)."""

    @tf.function(reduce_retracing=True, autograph=False)  # no control flow to convert
    def log_weights(inputs, eps):
        log_px_z, log_pz, log_qz, _ = model.sample_terms(inputs, eps)
        return log_px_z + log_pz - log_qz

    return log_weights


#: How often a long evaluation saves its finished batches (see importance_weighted_nll's `checkpoint`).
CHECKPOINT_SECONDS = 120
#: Memory for the decoder's activations in one call of an importance-weighted evaluation.
DECODER_MEMORY_BYTES = 2 << 30


def evaluation_batches(model, k, budget=DECODER_MEMORY_BYTES):
    """(images per batch, samples per chunk) so that one decoder call of their product fits `budget`.

    Bounded by the sum of every decoder layer's output (float32), an overestimate of what one call
    holds at once: an MLP's 2,000 floats per image allow the full 100 x 500, a residual 32x32x3
    decoder's ~10^6 one image x ~500 samples.
    """
    per_image = 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in model.decoder.layers)
    images = max(1, budget // per_image)  # decoder images per call
    chunk = min(k, 500, images)
    return max(1, min(100, images // chunk)), chunk


def importance_weighted_nll(model, x, k=5000, batch_size=None, samples_per_chunk=None, seed=0, progress=True,
                            checkpoint=None, labels=None):
    """-log p(x) estimated by the IWAE bound with k samples, per example, plus the k-sample ELBO.

    Memory stays bounded: samples are drawn `samples_per_chunk` at a time for
    `batch_size` images (a decoder batch of their product; both default to `evaluation_batches`),
    and the log-sum-exp over all k runs in float64. The draws are seeded (stateless, keyed by batch and chunk).
    Returns (nll [N], elbo [N]): elbo is the mean log weight, an unbiased k-sample
    estimate of the ELBO.

    `checkpoint`: an .npz path for evaluations that take hours (a residual VAE at k=5000): the
    finished batches are saved there every CHECKPOINT_SECONDS, with the seconds spent on them
    (`checkpointed_seconds`), a call with the same path resumes after them (the draws are keyed by
    batch, so the result is an uninterrupted call's), and the file is removed at the end. The caller
    keys the path to the model, images, k and seed.
    A conditional model takes the images' `labels`. `x` may be `TestImages` (a streamed split, read a batch
    at a time; its labels its own).
    """
    k = check_positive_int("k", k)
    if not isinstance(x, TestImages):  # checked whole before any work; TestImages a batch at a time
        x = model.check_images(x).numpy()
        if model.conditional:
            labels = model.check_labels(labels, like=x).numpy()
    images = as_test_images(x, labels)
    log_weights = _log_weights_fn(model)
    default_batch, default_chunk = evaluation_batches(model, k)
    batch_size = batch_size or default_batch
    chunk = min(k, samples_per_chunk or default_chunk)
    nll, elbo = np.empty(len(images)), np.empty(len(images))
    done, earlier_s = 0, checkpointed_seconds(checkpoint)
    if checkpoint is not None and Path(checkpoint).exists():
        with np.load(checkpoint) as saved:
            done = int(saved["done"])
            nll[:done], elbo[:done] = saved["nll"][:done], saved["elbo"][:done]
    started = saved_at = time.time()
    bar = keras.utils.Progbar(len(images), unit_name="image") if progress else None
    if bar is not None and done:
        bar.add(done)
    first = done // batch_size * batch_size  # finished batches are not read again (a partly covered one is redone)
    for start, xb, yb in images.batches(batch_size, first):
        b = start // batch_size  # the draws' key: the batch's index in the whole split
        if images.streamed:
            xb = model.check_images(xb).numpy()
            if model.conditional:
                yb = model.check_labels(yb, like=xb).numpy()
        parts = []
        for c, lo in enumerate(range(0, k, chunk)):
            s = min(chunk, k - lo)
            eps = tf.random.stateless_normal([s, len(xb), model.latent_dim], seed=[seed, b * 100003 + c])
            inputs = tf.constant(xb) if yb is None else (tf.constant(xb), tf.constant(yb))
            parts.append(log_weights(inputs, eps).numpy().astype(np.float64))
        lw = np.concatenate(parts)  # [k, B]
        top = lw.max(axis=0)
        nll[start:start + len(xb)] = -(top + np.log(np.exp(lw - top).mean(axis=0)))
        elbo[start:start + len(xb)] = lw.mean(axis=0)
        if bar is not None:
            bar.add(len(xb))
        if checkpoint is not None and time.time() - saved_at >= CHECKPOINT_SECONDS:
            with atomic_path(checkpoint, suffix=".npz") as tmp:
                np.savez(tmp, done=start + len(xb), nll=nll[:start + len(xb)], elbo=elbo[:start + len(xb)],
                         seconds=earlier_s + time.time() - started)
            saved_at = time.time()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return nll, elbo


def checkpointed_seconds(checkpoint):
    """Seconds an interrupted `importance_weighted_nll` spent on the batches its checkpoint holds (0 if none)."""
    if checkpoint is None or not Path(checkpoint).exists():
        return 0.0
    with np.load(checkpoint) as saved:
        return float(saved["seconds"]) if "seconds" in saved.files else 0.0


def posterior_statistics(model, x, batch_size=1000, labels=None):
    """Active units and KL(q || p), averaged over x (nats): per latent dimension where p is N(0, I) (it then splits
    by dimension), else the model's own `kl_divergence` (a VampPrior's approximated, a two-layer VAE's at z2's mean).

    A batch at a time (x an array or `TestImages`): the activity, the variance of the posterior mean over x,
    by `RunningMoments`; the KLs as float64 sums."""
    activity, kl_sum, per_dim_sum = RunningMoments(), 0.0, 0.0
    per_dim = model.prior_type == "standard" and not hasattr(model, "latent_dims")
    for _, xb, yb in as_test_images(x, labels).batches(batch_size):
        m, lv = model.encode(xb) if yb is None else model.encode(xb, yb)
        kl_sum += float(model.kl_divergence(m, lv).numpy().astype(np.float64).sum())
        mean, log_var = m.numpy().astype(np.float64), lv.numpy().astype(np.float64)
        activity.add(mean)
        if per_dim:
            per_dim_sum = per_dim_sum + (0.5 * (mean**2 + np.exp(log_var) - 1.0 - log_var)).sum(axis=0)
    variance = activity.variance
    return {"active_units": int((variance > ACTIVE_UNIT_THRESHOLD).sum()),
            "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
            "activity_per_dim": variance.round(5).tolist(),
            "kl_per_dim": (per_dim_sum / activity.count).round(5).tolist() if per_dim else None,
            "kl": kl_sum / activity.count}


def evaluate_vae(model, x_test, k=5000, progress=True, seed=0, cache=None, checkpoint=None, labels=None):
    """Test ELBO, NLL (IWAE bound, k samples), active units and KL per dimension, in nats.

    A discretized-logistic model's p(x|z) is a probability of the 8-bit images, so its NLL is a
    code length: also reported as `nll_bits_per_dim` (and `elbo_bits_per_dim`, the negative ELBO).

    `cache`: a JSON file of earlier results keyed by the weights' sha256, the test images,
    k and seed, so a long evaluation (k=5000 on 10,000 images takes a quarter of an hour
    on 2 CPU cores) is not redone by `scripts/evaluate.py` or a rerun of reproduce; an
    interrupted one resumes from a checkpoint next to it (`importance_weighted_nll`). A conditional model takes
    the images' `labels`. `x_test` may be `TestImages` (a streamed split): every number is then computed a
    batch at a time, and equals the in-memory evaluation's of the same images.
    """
    if cache is not None:
        key = _cache_key(model, k, seed, x_test, labels)
        cache = Path(cache)
        try:
            entries = json.loads(cache.read_text())
        except (OSError, ValueError):
            entries = {}
        if key in entries:
            return entries[key]
        partial = cache.with_name(f"{cache.stem}-{key[:16]}.partial.npz")  # resumes an interrupted evaluation
        result = evaluate_vae(model, x_test, k=k, progress=progress, seed=seed, checkpoint=partial, labels=labels)
        entries[key] = result
        write_json(cache, entries)
        return result
    start = time.time() - checkpointed_seconds(checkpoint)  # an interrupted evaluation's time counts too
    if isinstance(x_test, TestImages):
        x = x_test.binarized() if getattr(model, "binary_data", False) else x_test
    else:
        x = train_lib.evaluation_images(model, x_test)
    nll, elbo = importance_weighted_nll(model, x, k=k, seed=seed, progress=progress, checkpoint=checkpoint,
                                        labels=labels)
    bits = {}
    if getattr(model, "likelihood", None) == "discretized_logistic":
        bits = {"nll_bits_per_dim": bits_per_dim(float(nll.mean()), model.image_shape),
                "elbo_bits_per_dim": bits_per_dim(-float(elbo.mean()), model.image_shape)}
    return {"nll": float(nll.mean()), "nll_stderr": float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1
            else None, "elbo": float(elbo.mean()), **bits, "k": k, "num_images": len(x),
            **posterior_statistics(model, x, labels=labels),
            "reconstruction": reconstruction_metrics_of(model, x, labels=labels),
            "evaluation_time_s": round(time.time() - start, 1)}


def _cache_key(model, k, seed, x_test, labels):
    """evaluate_vae's cache key: sha256 of the weights' digest, k, seed, the images' shape, their float32 bytes
    and the labels' int64 bytes; TestImages hashed a batch at a time to the same key as the array."""
    head = lambda shape: f"{train_lib.weights_digest(model)}|{k}|{seed}|{tuple(shape)}".encode()  # noqa: E731
    if not isinstance(x_test, TestImages):
        x = np.ascontiguousarray(np.asarray(x_test, np.float32))
        given = b"" if labels is None else np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes()
        return hashlib.sha256(head(x.shape) + x.tobytes() + given).hexdigest()
    digest, given = hashlib.sha256(head(x_test.shape)), []
    for _, xb, yb in x_test.batches(1000):
        digest.update(np.ascontiguousarray(xb, np.float32).tobytes())
        if yb is not None:
            given.append(np.asarray(yb, np.int64))
    if given:
        digest.update(np.ascontiguousarray(np.concatenate(given)).tobytes())
    return digest.hexdigest()


# ---- AEs, DAEs and PCA --------------------------------------------------------------------------

def evaluate_autoencoder(model, x_test):
    """Reconstruction MSE, binary cross-entropy and PSNR of the (clean) test images (an array or `TestImages`)."""
    if isinstance(x_test, TestImages):
        return reconstruction_metrics_of(model, x_test)
    return reconstruction_metrics(x_test, reconstruct(model, x_test))


#: The corruptions a DAE is scored on: (type, level).
DENOISING_NOISES = (("gaussian", 0.3), ("gaussian", 0.5), ("masking", 0.5))


def corrupt(x, noise_type, level, seed=0, first=0):
    """Seeded corruption of images, as DenoisingAutoencoder trains with (any type and level); x as rows `first`
    on of a split: their rows of corrupting the whole split."""
    x = tf.constant(x, tf.float32)
    return apply_noise(x, noise_type, level, lambda kind, shape: draw_rows(kind, shape, seed, first)).numpy()


def evaluate_denoising(model, x_test, noises=DENOISING_NOISES, seed=0, batch_size=1000):
    """PSNR (dB) of noisy vs clean and of denoised (model.reconstruct(noisy)) vs clean, per noise.

    A batch at a time (x_test an array or `TestImages`), each batch read once for every noise, with its rows of
    the whole split's corruption (`corrupt`'s `first`): a streamed split scores as the same images in memory."""
    sums = [dict.fromkeys(("psnr_noisy", "psnr_denoised", "se_noisy", "se_denoised"), 0.0) for _ in noises]
    images = pixels = 0
    for start, xb, _ in as_test_images(x_test).batches(batch_size):
        clean = xb.astype(np.float64)
        for (noise_type, level), row in zip(noises, sums):
            noisy = corrupt(xb, noise_type, level, seed, first=start)
            for name, y in (("noisy", noisy), ("denoised", np.asarray(model.reconstruct(noisy)))):
                row[f"psnr_{name}"] += float(psnr(clean, y).sum())
                row[f"se_{name}"] += float(((clean - y.reshape(clean.shape)) ** 2).sum())
        images, pixels = images + len(xb), pixels + xb.size
    rows = [{"noise": noise_type, "level": level, "psnr_noisy_db": row["psnr_noisy"] / images,
             "psnr_denoised_db": row["psnr_denoised"] / images, "mse_noisy": row["se_noisy"] / pixels,
             "mse_denoised": row["se_denoised"] / pixels} for (noise_type, level), row in zip(noises, sums)]
    return [{**row, "gain_db": row["psnr_denoised_db"] - row["psnr_noisy_db"]} for row in rows]


def pca_baseline(x_train, x_test, n_components, seed=0):
    """PCA with n_components fitted on x_train: test reconstruction metrics and the codes of both splits (of
    TestImages, metrics summed a batch at a time and no test codes: None)."""
    from sklearn.decomposition import PCA

    flat_train = x_train.reshape(len(x_train), -1)
    pca = PCA(n_components=n_components, random_state=seed).fit(flat_train)
    if isinstance(x_test, TestImages):
        sums = None
        for _, xb, _ in x_test.batches(1000):
            x_hat = pca.inverse_transform(pca.transform(xb.reshape(len(xb), -1)))
            sums = _reconstruction_sums(xb, np.clip(x_hat, 0.0, 1.0).reshape(xb.shape), sums)
        explained = float(pca.explained_variance_ratio_.sum())
        return ({"metrics": _reconstruction_result(sums), "explained_variance": explained},
                pca.transform(flat_train), None)
    flat_test = x_test.reshape(len(x_test), -1)
    z_test = pca.transform(flat_test)
    x_hat = np.clip(pca.inverse_transform(z_test), 0.0, 1.0).reshape(x_test.shape)
    return {"metrics": reconstruction_metrics(x_test, x_hat),
            "explained_variance": float(pca.explained_variance_ratio_.sum())}, pca.transform(flat_train), z_test


def knn_accuracy(z_train, y_train, z_test, y_test, k=5):
    """Test accuracy of a k-nearest-neighbour classifier fitted on the training codes."""
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(n_neighbors=k).fit(z_train, y_train).score(z_test, y_test))


# ---- does the aggregate code follow the prior? ----------------------------------------------------

#: Inverse multiquadric kernel scales (Tolstikhin et al. 2018, WAE): C = 2 * D * s.
_IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def mmd_to_prior(z, num=2000, seed=0):
    """Unbiased MMD^2 between codes z [N, D] and as many N(0, I) draws, IMQ kernel summed over scales.

    Also returns the same statistic between two independent N(0, I) samples of that size
    (the estimator's noise floor) and the codes' mean norm and average per-dimension std. The unbiased
    estimator needs two codes: with one, both statistics are None.
    """
    rng = np.random.default_rng(seed)
    z = np.asarray(z, np.float64)
    if len(z) > num:
        z = z[rng.choice(len(z), num, replace=False)]
    return _mmd_statistics(z, rng)


def prior_match(model, images, num=2000, seed=0, batch_size=1000):
    """mmd_to_prior(codes(model, images), num, seed) for `TestImages`, a batch at a time: only the `num` codes the
    statistic samples are kept (the same ones, drawn by the same generator)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), num, replace=False) if len(images) > num else np.arange(len(images))
    z = None
    for start, xb, yb in images.batches(batch_size):
        inside = (pick >= start) & (pick < start + len(xb))
        if inside.any():
            zb = codes(model, xb, batch_size, labels=yb)
            z = np.empty((len(pick), zb.shape[-1])) if z is None else z
            z[inside] = zb[pick[inside] - start]
    return _mmd_statistics(z, rng)


def _mmd_statistics(z, rng):
    n, d = z.shape

    def mmd(a, b):
        def kernel(u, v):
            sq = np.maximum((u**2).sum(1)[:, None] + (v**2).sum(1)[None, :] - 2 * u @ v.T, 0.0)
            return sum(2 * d * s / (2 * d * s + sq) for s in _IMQ_SCALES)

        kaa, kbb, kab = kernel(a, a), kernel(b, b), kernel(a, b)
        off = 1.0 - np.eye(len(a))
        return float((kaa * off).sum() / (n * (n - 1)) + (kbb * off).sum() / (n * (n - 1)) - 2 * kab.mean())

    prior = rng.standard_normal((n, d))
    enough = n >= 2  # the unbiased estimator averages over the n(n - 1) pairs
    return {"mmd2": mmd(z, prior) if enough else None,
            "mmd2_prior_vs_prior": mmd(rng.standard_normal((n, d)), prior) if enough else None,
            "num": n, "code_mean_norm": float(np.linalg.norm(z.mean(axis=0))),
            "code_std_mean": float(z.std(axis=0).mean())}


# ---- one run ----------------------------------------------------------------------------------

def evaluate_run(run_dir, k=5000, max_test_samples=None, progress=True):
    """Every metric that applies to the run's model, on its test split; also written to RUN_DIR/evaluation.json."""
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    data, x_train = run_data(run_dir, stream_test=True)
    labels = None
    if model.conditional and (not data.test.has_labels if data.streamed else data.y_test is None):
        raise ValueError(f"{run_dir}: a conditional model is evaluated on labelled test images; its dataset's "
                         "test split has no labels")
    if data.streamed:  # read a batch at a time
        x_test = TestImages(data.test.head(max_test_samples), labels=model.conditional)
    else:
        x_test = data.x_test[:max_test_samples]
        labels = data.y_test[:len(x_test)] if model.conditional else None
    result = {"model": type(model).__name__, "family": model.family, "num_test": len(x_test)}
    if model.family in ("vae", "cvae"):
        result["vae"] = evaluate_vae(model, x_test, k=k, progress=progress, cache=run_dir / EVALUATION_CACHE,
                                     labels=labels)
    elif model.family == "vqvae":  # integer codes: their rate and use, no PCA of equal size or prior match
        from kerasae.compression import vq_rate_distortion

        result["reconstruction"] = evaluate_autoencoder(model, x_test)
        result["codes"] = vq_rate_distortion(model, x_test)
        write_json(run_dir / "evaluation.json", result)
        return result
    else:
        result["reconstruction"] = evaluate_autoencoder(model, x_test)
        pca, _, _ = pca_baseline(x_train, x_test, model.latent_dim)
        result["pca_same_code_size"] = pca
    if model.family == "dae":
        result["denoising"] = evaluate_denoising(model, x_test)
    result["prior_match"] = (prior_match(model, x_test) if isinstance(x_test, TestImages)
                             else mmd_to_prior(codes(model, x_test, labels=labels)))
    write_json(run_dir / "evaluation.json", result)
    return result

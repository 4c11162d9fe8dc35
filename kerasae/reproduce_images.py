"""reproduce's stages on real images beyond MNIST: Fashion-MNIST (`fashion`) and colour photographs (`photos`).

- fashion: AE vs PCA at the same code size on Fashion-MNIST, and the test NLL of an 8-bit VAE
  (discretized logistic decoder) in bits per dimension next to lossless PNG and WebP on the same images.
- photos, photos-64: a residual conv VAE on 32x32 (64x64) patches of scikit-image's photographs,
  tested on photographs it never saw (`kerasae.datasets.photos`): bits per dimension against PNG and
  WebP, per photograph, with reconstructions, samples and interpolations as figures.
"""

import functools
from pathlib import Path

import numpy as np

from kerasae import compression
from kerasae import evaluate as ev
from kerasae import plots
from kerasae import reproduce as mnist_stages
from kerasae.datasets import photos

#: Importance samples of the full runs' NLL (k=5000 on MNIST; these bounds move < 0.01 bits/dim beyond 1000)
DEFAULT_K = 1000


def _codecs(x):
    """Each lossless codec's bits per dimension on x [N, H, W, C], every image one file."""
    return {codec: float(compression.lossless_bits_per_dim(x, codec).mean()) for codec in compression.LOSSLESS_CODECS}


@functools.cache
def _whole_photo(name):
    """(`_codecs`, shape) of a whole test photograph, once per process: the photos and photos-64 stages share it,
    and WebP's slowest method takes tens of seconds per photograph on a busy CPU."""
    full = photos.load_photo(name)
    return _codecs(full[None] / 255.0), full.shape


# ---- Fashion-MNIST ------------------------------------------------------------------------------

def fashion_results(runs, fig_dir, k=DEFAULT_K, progress=True):
    fig_dir.mkdir(parents=True, exist_ok=True)
    models = {name: ev.load_model(run_dir) for name, run_dir in runs.items()}
    data, x_train = ev.run_data(runs["fashion-ae-2"])
    x_test = data.x_test
    vae = models["fashion-vae"]
    out = {"runs": {name: mnist_stages.run_record(run_dir) for name, run_dir in runs.items()},
           "data": {"num_train": len(x_train), "num_test": len(x_test)},
           "ae_vs_pca": mnist_stages.ae_vs_pca({n: models[n] for n in ("fashion-ae-2", "fashion-ae-32")},
                                              x_train, x_test),
           "vae": ev.evaluate_vae(vae, x_test, k=k, progress=progress,
                                  cache=Path(runs["fashion-vae"]) / ev.EVALUATION_CACHE),
           "lossless_bits_per_dim": _codecs(x_test),
           "conventions": {"bits_per_dim": "nats / (28 * 28 * ln 2); codecs: 8 * bytes of each test image saved "
                                           "alone (headers included) / 784"}}
    plots.save_panels([(f"{name}: test images / reconstructions",
                        plots.reconstruction_grid(x_test[:10], ev.reconstruct(models[name], x_test[:10])))
                       for name in mnist_stages.STAGES["fashion"]], fig_dir / "fashion_reconstructions.png", cols=1)
    plots.save_image(plots.image_grid(vae.sample(64, seed=0).numpy(), 8), fig_dir / "fashion_vae_samples.png",
                     "fashion-vae: decoded z ~ N(0, I) (location of p(x|z))")
    return out


# ---- photographs --------------------------------------------------------------------------------

def _tiles_to_photo(tiles, shape):
    """Tiles [rows * cols, s, s, C] in row-major order -> one [rows * s, cols * s, C] image."""
    s = tiles.shape[1]
    rows, cols = shape[0] // s, shape[1] // s
    return tiles.reshape(rows, cols, s, s, -1).transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, -1)


def photo_results(runs, fig_dir, k=DEFAULT_K, progress=True, prefix="photos"):
    """The stage's one run on its patches; figures `{prefix}_reconstructions.png`, `_samples`, `_interpolation`."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    (run_name, run_dir), = runs.items()
    run_dir = Path(run_dir)
    model = ev.load_model(run_dir)
    data, x_train = ev.run_data(run_dir)
    names = photos.TRAIN_PHOTOS + photos.TEST_PHOTOS  # y is an index into these (patch_dataset's `names`)
    x_test, y_test = data.x_test, data.y_test
    tiles = {names[index]: x_test[y_test == index] for index in np.unique(y_test)}
    per_photo = {}
    for name, xs in tiles.items():
        whole_codecs, shape = _whole_photo(name)
        per_photo[name] = {"num_patches": len(xs),
                           "vae": ev.evaluate_vae(model, xs, k=k, progress=progress,
                                                  cache=run_dir / ev.EVALUATION_CACHE),
                           "codecs_per_patch": _codecs(xs),
                           "codecs_whole_photo": dict(whole_codecs), "photo_shape": list(shape)}
    weights = np.array([len(xs) for xs in tiles.values()]) / len(x_test)

    def mean(get):
        return float(sum(w * get(r) for w, r in zip(weights, per_photo.values())))

    size = model.image_shape[0]
    out = {"runs": {run_name: mnist_stages.run_record(run_dir)},
           "data": {"train_photos": list(photos.TRAIN_PHOTOS), "test_photos": list(photos.TEST_PHOTOS),
                    "patch": list(model.image_shape), "num_train": len(x_train),
                    "num_validation": len(data.x_train) - len(x_train), "num_test": len(x_test),
                    "train_stride": photos.train_stride(size), "test_stride": size},
           "test": {"nll_bits_per_dim": mean(lambda r: r["vae"]["nll_bits_per_dim"]),
                    "elbo_bits_per_dim": mean(lambda r: r["vae"]["elbo_bits_per_dim"]), "k": k,
                    **{f"{c} per patch": mean(lambda r, c=c: r["codecs_per_patch"][c])
                       for c in compression.LOSSLESS_CODECS}},
           "per_photo": per_photo,
           "conventions": {"bits_per_dim": "nats / (H * W * C * ln 2) of the 8-bit test patches (IWAE bound, k "
                                           "samples); codecs: 8 * file bytes / (H * W * C), each patch (or whole "
                                           "photograph) saved alone, headers included",
                           "test": "means over all test patches (each photograph weighted by its patches)"}}

    # Figures: each test photograph next to its tile-by-tile reconstruction; samples; interpolations.
    panels = []
    for name, xs in tiles.items():
        shape = per_photo[name]["photo_shape"]
        if len(xs) != (shape[0] // size) * (shape[1] // size):  # some tiles left out (max_test_samples)
            continue
        panels.append((f"{name}: test tiles", _tiles_to_photo(xs, shape)))
        panels.append((f"{name}: reconstructed tile by tile (posterior mean, location of p(x|z))",
                       _tiles_to_photo(ev.reconstruct(model, xs), shape)))
    plots.save_panels(panels, fig_dir / f"{prefix}_reconstructions.png", cols=2)
    plots.save_image(plots.image_grid(model.sample(64, seed=0).numpy(), 8), fig_dir / f"{prefix}_samples.png",
                     f"{run_name}: decoded z ~ N(0, I)")
    pairs = [(i, i + len(x_test) // 2) for i in range(0, len(x_test) // 2, max(1, len(x_test) // 8))][:4]
    plots.save_image(plots.image_grid(mnist_stages.interpolations(model, x_test, pairs), 10),
                     fig_dir / f"{prefix}_interpolation.png", "Linear interpolation between test patches' codes")
    return out


def summary_parts(results):
    """Markdown tables of these stages' results (reproduce.summary adds them)."""
    table = mnist_stages.markdown_table
    parts = []
    fashion = results.get("fashion")
    if fashion:
        parts.append("Fashion-MNIST: AE vs PCA at the same code size (test MSE per pixel, PSNR dB):\n\n"
                     + mnist_stages.ae_vs_pca_table(fashion["ae_vs_pca"]))
        vae = fashion["vae"]
        parts.append("Fashion-MNIST test images, bits per dimension:\n\n" + table(
            ["model", "bits/dim"],
            [[f"fashion-vae NLL (k={vae['k']})", f"{vae['nll_bits_per_dim']:.3f}"],
             ["fashion-vae -ELBO", f"{vae['elbo_bits_per_dim']:.3f}"]]
            + [[c, f"{b:.3f}"] for c, b in fashion["lossless_bits_per_dim"].items()]))
    for photo in (results.get("photos"), results.get("photos-64")):
        if not photo:
            continue
        rows = [[name, r["num_patches"], f"{r['vae']['nll_bits_per_dim']:.3f}"]
                + [f"{r['codecs_per_patch'][c]:.3f} ({r['codecs_whole_photo'][c]:.3f})"
                   for c in compression.LOSSLESS_CODECS]
                for name, r in photo["per_photo"].items()]
        h, w = photo["data"]["patch"][:2]
        parts.append(f"Photographs never seen in training, {h}x{w} patches, bits per dimension (VAE: NLL, "
                     f"k={photo['test']['k']}; codecs: per patch (whole photograph)):\n\n" + table(
                         ["photograph", "patches", "VAE", *compression.LOSSLESS_CODECS], rows))
    return parts

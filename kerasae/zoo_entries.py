"""The pretrained zoo's entries as data: where each model comes from and how the zoo exports it (no TensorFlow)."""

from typing import NamedTuple


class ZooEntry(NamedTuple):
    """Where a zoo model comes from: reproduce's results file and run, the metric that decides whether a new run
    replaces it (lower is better unless `higher_is_better`), the registry preset its architecture starts from, and
    what it is."""

    results_file: str
    key: str | None  # the run in results_file (None: the stage's best NLL run)
    metric: str
    preset: str
    summary: str
    higher_is_better: bool = False


#: Zoo name -> its entry. Names follow keras-hub's `<model>_<size>_<data>` with underscores, so a pretrained model
#: never shares a name with a registry preset (hyphens), whose configuration may differ.
ZOO = {
    "ae_mlp_2d_mnist": ZooEntry("seed_claims.json", "ae-mlp-seed", "mse_per_pixel", "ae-mlp-seed",
                                "the classic deep MLP autoencoder 784-512-256-128-32-2 (a 2-D code)"),
    "dae_mlp_64d_mnist": ZooEntry("seed_claims.json", "dae-mlp", "mse_per_pixel", "dae-mlp",
                                  "a denoising MLP autoencoder 784-512-256-64, trained on gaussian noise (std 0.5)"),
    "vae_mlp_2d_mnist": ZooEntry("seed_claims.json", "vae-mlp-2d", "nll", "vae-mlp-2d",
                                 "an MLP VAE with a 2-D latent, for latent plots and manifolds"),
    "iwae_mlp_50d_mnist": ZooEntry("nll.json", None, "nll", "iwae-mlp",
                                   "a one-layer MLP VAE 784-512-512-512-50: 250 epochs on the ELBO with a KL "
                                   "warm-up, then 100 on the IWAE bound (k=5)"),
    "hvae_vamp_mlp_mnist": ZooEntry("nll_hvae.json", None, "nll", "hvae-mlp-vamp",
                                    "a two-layer hierarchical MLP VAE with a VampPrior: 1,500 epochs on the ELBO "
                                    "with a KL warm-up, then 300 on the IWAE bound (k=5); the best likelihood"),
    "vae_resnet_32d_mnist": ZooEntry("nll_resnet.json", None, "nll", "vae-resnet-28",
                                     "a residual convolutional VAE with a 32-D latent (3.5x fewer weights than "
                                     "the MLP VAEs)"),
    "vqvae_conv_mnist": ZooEntry("vq_compression.json", "vqvae-conv", "psnr_db", "vqvae-conv",
                                 "a convolutional VQ-VAE: each image a 7x7 grid of codes from a 512-vector codebook "
                                 "(55.1 bytes per image as fixed-length codes)", higher_is_better=True),
}
#: How the zoo exports: TFLite of decode only, and the weights stored once (no model.keras: `load_keras_model`
#: rebuilds the model from the manifest and the SavedModel), which halves the bytes the package ships.
ZOO_EXPORT = dict(tflite=("fp32", "int8"), tflite_signatures=("decode",), keras_model=False)
#: The zoo's bytes in the package: the MNIST models (~46 MiB) and the codec ladder (float16 weights, ~2.5 MiB a
#: quality), within a wheel under 100 MB (.ci/run checks the wheel).
MAX_ZOO_BYTES = 72 * 2**20
#: What every zoo model was trained and tested on (reproduce's protocol; benchmarks/results/*.json).
ZOO_DATASET = ("MNIST, the copy embedded in kerasae: 55,000 training images (the last 5,000 of the 60,000 held out "
               "for validation and model selection), tested on all 10,000 test images")

"""The training runs behind kerasae's published figures, as data (name -> TrainConfig kwargs).

`python scripts/reproduce.py` trains each (or resumes it, or reuses a finished run with
the same config), then evaluates it. Every run has a full setting (the published
numbers) and a quick one (a smoke test of the same code path, for CI).
"""

import dataclasses
import json
from pathlib import Path

from kerasae import training as train_lib
from kerasae.datasets import photos

STEPS_PER_EPOCH = 430  # MNIST: 55,000 training images (5,000 held out) in batches of 128


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    config: dict  # TrainConfig kwargs of the full run
    quick: dict = dataclasses.field(default_factory=dict)  # overrides for the quick mode
    init_from: str | None = None  # another experiment: this run fine-tunes its best model (best.keras)

    def train_config(self, root, quick=False, verbose="auto", data_dirs=None):
        kwargs = {**self.config, **(QUICK if quick else {}), **(self.quick if quick else {})}
        mode_root = Path(root) / ("quick" if quick else "full")
        if "dataset" in kwargs:  # "npz:{data}/NAME.npz" (built by `run`), "idx:{fashion_mnist}" (DATA_DIRS)
            kwargs["dataset"] = kwargs["dataset"].format(data=mode_root / "data", **{**DATA_DIRS, **(data_dirs or {})})
        if self.init_from:
            kwargs["init_from"] = str(mode_root / self.init_from / "best.keras")
        return train_lib.TrainConfig(out=str(mode_root / self.name), verbose=verbose, **kwargs)


#: Data on this machine that runs read, `{name}` in an experiment's dataset spec -> its default directory.
#: Fashion-MNIST: the IDX files of Debian's `dataset-fashion-mnist` package (`apt install dataset-fashion-mnist`).
DATA_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
#: Data the runs build themselves, as ROOT/MODE/data/NAME.npz (spec "npz:{data}/NAME.npz"): NAME -> writer(path).
BUILT_DATA = {f"photos-{size}": (lambda path, size=size: photos.write_patches(path, size=size)) for size in (32, 64)}

#: Every quick run: a few epochs on a slice of MNIST (minutes on 2 CPU cores, all runs together).
QUICK = dict(epochs=2, max_train_samples=1000, max_test_samples=200, validation_size=200)
#: Quick mode of the residual models: a smoke test of their path, not of their numbers. Batches of 32: a residual
#: step at batch 128 takes seconds on a CPU.
QUICK_RESIDUAL = dict(max_train_samples=64, validation_size=32, batch_size=32)

EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(name, description, config, quick=None, init_from=None):
    if init_from is not None and init_from not in EXPERIMENTS:
        raise ValueError(f"init_from: experiment {init_from!r} must be registered first")
    EXPERIMENTS[name] = Experiment(name, description, config, quick or {}, init_from)


register_experiment("ae-mlp-seed", "The classic deep AE with a 2-D code: AE vs PCA, interpolation, prior samples.",
                    dict(preset="ae-mlp-seed", epochs=50))
register_experiment("ae-mlp-32", "MLP AE 784-512-256-32: compression (8-bit codes) and AE-vs-VAE samples.",
                    dict(preset="ae-mlp-seed", model_kwargs=dict(hidden_units=(512, 256), latent_dim=32),
                         epochs=50))
register_experiment("dae-mlp", "Denoising AE (gaussian std 0.5): PSNR of noisy vs denoised images.",
                    dict(preset="dae-mlp", epochs=50))
register_experiment("vae-mlp-2d", "VAE with a 2-D latent: manifold grid, latent scatter, kNN at 2-D.",
                    dict(preset="vae-mlp-2d", epochs=50))
register_experiment("vae-mlp", "MLP VAE 784-512-256-32 (the default preset): AE-vs-VAE samples and latents.",
                    dict(preset="vae-mlp", epochs=50))
register_experiment(
    "vae-nll", "The likelihood run: MLP VAE 784-512-512-512-50, ELBO, KL warm-up, 250 epochs (test NLL, k=5000).",
    dict(preset="vae-mlp", model_kwargs=dict(hidden_units=(512, 512, 512), latent_dim=50,
                                             kl_warmup_steps=20 * STEPS_PER_EPOCH),
         epochs=250),
    quick=dict(model_kwargs=dict(hidden_units=(512, 512, 512), latent_dim=50, kl_warmup_steps=10)))
register_experiment(
    "iwae-nll", "The IWAE likelihood run: vae-nll's best model fine-tuned on the IWAE bound (k=5) for 100 epochs.",
    # Fine-tuning beats training from scratch on the budget: 60 epochs of IWAE k=5 from scratch reach
    # about 85.6 nats at ~21 s/epoch on a 2-core CPU, while vae-nll (~9 s/epoch) is already at 84.9.
    dict(preset="iwae-mlp", model_kwargs=dict(num_importance_samples=5, kl_warmup_steps=0),
         learning_rate=3e-4, epochs=100),
    init_from="vae-nll")


register_experiment(
    "vae-resnet-nll", "The residual conv VAE on binarized MNIST (preset vae-resnet-28: stages 16-32-64 to 7x7, 32-D "
    "latent), KL warm-up, test NLL by the IWAE bound (k=5000) against the MLP VAE's.",
    dict(preset="vae-resnet-28", model_kwargs=dict(kl_warmup_steps=10 * STEPS_PER_EPOCH), epochs=100),
    # Quick: the residual slice and 64 test images (each evaluated k times by the residual decoder).
    quick=dict(model_kwargs=dict(kl_warmup_steps=10), max_test_samples=64, **QUICK_RESIDUAL))
register_experiment(
    "hvae-nll", "Two stochastic layers under a VampPrior (preset hvae-mlp-vamp: z1, z2 40-D, 500 pseudo-inputs), "
    "ELBO with a 100-epoch KL warm-up, 1500 epochs.",
    dict(preset="hvae-mlp-vamp", model_kwargs=dict(kl_warmup_steps=100 * STEPS_PER_EPOCH), epochs=1500),
    quick=dict(model_kwargs=dict(kl_warmup_steps=10, num_pseudo_inputs=50)))
register_experiment(
    "hvae-iwae-nll", "hvae-nll's best model fine-tuned on the IWAE bound (k=5) for 300 epochs: the likelihood run "
    "that aims below 82.5 nats in at most 4 hours of training in all.",
    dict(preset="hvae-mlp-vamp", model_kwargs=dict(num_importance_samples=5, kl_warmup_steps=0),
         learning_rate=3e-4, epochs=300),
    quick=dict(model_kwargs=dict(num_importance_samples=5, kl_warmup_steps=0, num_pseudo_inputs=50)),
    init_from="hvae-nll")
# VQ-VAEs on MNIST's grey levels (as the seed stage's AEs): three code lengths for the rate-distortion figure.
register_experiment("vqvae-mlp-8", "VQ-VAE 784-512-256 -> 8 codes of a 256-vector codebook: 8 bytes per image.",
                    dict(preset="vqvae-mlp", epochs=30))
register_experiment("vqvae-mlp-32", "VQ-VAE 784-512-256 -> 32 codes of a 256-vector codebook: 32 bytes per image, "
                    "the size of ae-mlp-32's 8-bit code.", dict(preset="vqvae-mlp", model_kwargs=dict(num_codes=32),
                                                               epochs=30))
register_experiment("vqvae-conv", "VQ-VAE conv 32-64 -> a 7x7 grid of codes of a 512-vector codebook: 55.1 bytes "
                    "per image.", dict(preset="vqvae-conv", epochs=20))
register_experiment("fashion-ae-2", "The classic deep AE (2-D code) on Fashion-MNIST: AE vs PCA at 2-D.",
                    dict(preset="ae-mlp-seed", dataset="idx:{fashion_mnist}", epochs=30))
register_experiment("fashion-ae-32", "MLP AE 784-512-256-32 on Fashion-MNIST: AE vs PCA at 32-D.",
                    dict(preset="ae-mlp-seed", dataset="idx:{fashion_mnist}", epochs=30,
                         model_kwargs=dict(hidden_units=(512, 256), latent_dim=32)))
register_experiment(
    "fashion-vae", "MLP VAE 784-512-256-32 on 8-bit Fashion-MNIST, discretized logistic decoder with a predicted "
    "scale: test NLL in bits/dim against PNG.",
    dict(preset="vae-mlp", dataset="idx:{fashion_mnist}", epochs=30,
         model_kwargs=dict(likelihood="discretized_logistic", gaussian_scale="decoder")))
register_experiment(
    "photos-vae-resnet-32", "vae-resnet-32 (decoder-predicted logistic scale) on 32x32 patches of scikit-image's "
    "photographs, tested on photographs it never saw: bits/dim against PNG and WebP.",
    dict(preset="vae-resnet-32", dataset="npz:{data}/photos-32.npz", epochs=40,
         model_kwargs=dict(gaussian_scale="decoder")),
    # Quick: every 32x32 tile of the test photos (342), as the full run; few training patches, since a residual
    # image costs ~20x a conv one on a CPU.
    quick=dict(max_test_samples=500, **QUICK_RESIDUAL))
register_experiment(
    "photos-vae-resnet-64", "vae-resnet-64 (decoder-predicted logistic scale) on 64x64 patches of the same "
    "photographs, split the same way: bits/dim against PNG and WebP.",
    dict(preset="vae-resnet-64", dataset="npz:{data}/photos-64.npz", epochs=60,
         model_kwargs=dict(gaussian_scale="decoder")),
    quick=QUICK_RESIDUAL)


def get_experiment(name):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def finished(config):
    """True when config.out holds a completed run of exactly this config (what `train` would return untrained)."""
    return train_lib.finished_run(config) is not None


def run(name, root="runs/reproduce", quick=False, verbose="auto", data_dirs=None):
    """Train experiment `name` unless a finished run of the same config exists; return its run directory.

    An interrupted run resumes from its last completed epoch. Data the run builds (BUILT_DATA) is
    written first if missing; `data_dirs` overrides DATA_DIRS' directories.
    """
    experiment = get_experiment(name)
    if experiment.init_from:
        run(experiment.init_from, root, quick, verbose, data_dirs)
    config = experiment.train_config(root, quick, verbose, data_dirs)
    built = Path(root) / ("quick" if quick else "full") / "data"
    for data_name, write in BUILT_DATA.items():
        path = built / f"{data_name}.npz"
        if config.dataset == f"npz:{path}" and not path.exists():
            write(path)
    if finished(config):
        return Path(config.out)
    return train_lib.train(config).run_dir


def run_metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())

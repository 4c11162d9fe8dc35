"""Presets are data: a name maps to a model class and the keyword arguments it is built with.

Adding a preset is one `register_preset` line; it then gets the CLI (`--preset`), the
standard test contract and export for free. The built-in presets name their class
("kerasae.models:VAE"), which is imported on first use: listing presets and checking a
preset name need no TensorFlow, so the CLI answers at once.

Besides the autoencoder families (`FAMILIES`, what `--arch` picks and `kerasae.train` trains) the registry holds
the learned image codec's quality ladder (family "codec", `kerasae.codec.ladder`): `build` makes them, and they
train with `python scripts/train_codec.py` (`check_trainable` says so).
"""

import dataclasses
import importlib
import inspect

from kerasae.codec import ladder


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    family: str  # "ae", "dae", "vae", "cvae" or "vqvae" (what --arch calls it), or "codec"
    kwargs: dict
    description: str
    class_path: str  # "module:ClassName"

    @property
    def cls(self):
        cls = _import(self.class_path)
        check_keywords(cls, self.kwargs)
        return cls


PRESETS: dict[str, Preset] = {}

#: The preset `--arch FAMILY` picks.
DEFAULT_PRESETS = {"ae": "ae-mlp-seed", "dae": "dae-mlp", "vae": "vae-mlp", "cvae": "cvae-mlp", "vqvae": "vqvae-conv"}
#: The autoencoder families (a kerasae autoencoder's `family`): what kerasae.train trains.
FAMILIES = tuple(DEFAULT_PRESETS)
#: The family of kerasae.codec's models, whose presets are the quality ladder.
CODEC_FAMILY = "codec"


def register_preset(name, cls, description, **kwargs):
    """Register preset `name`: a model class (or "module:ClassName", imported on first use) and its kwargs."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    if isinstance(cls, str):
        class_path, family = cls, _BUILTIN_FAMILIES.get(cls)
        if family is None:
            family = _import(cls).family
    else:
        check_keywords(cls, kwargs)
        class_path, family = f"{cls.__module__}:{cls.__qualname__}", cls.family
    PRESETS[name] = Preset(name, family, kwargs, description, class_path)


def _import(class_path):
    module, _, name = class_path.partition(":")
    return getattr(importlib.import_module(module), name)


def list_presets(family=None):
    """Names of the registered presets, optionally of one family ("ae", "dae", "vae", "cvae", "vqvae", "codec")."""
    return [name for name, p in PRESETS.items() if family is None or p.family == family]


def get_preset(name):
    if name not in PRESETS:
        raise ValueError(unknown_preset_message(name))
    return PRESETS[name]


def check_trainable(name, argument="preset"):
    """Raise ValueError (naming `argument`) if preset `name` is a codec: kerasae.train's pipeline (MNIST-style
    datasets, autoencoder metrics, run directories) is the autoencoders'; the codecs train on photo crops."""
    if get_preset(name).family != CODEC_FAMILY:
        return
    rung = ladder.rung(name)
    how = f"`{ladder.train_command(*rung)}`" if rung else "model.fit"
    raise ValueError(f"{argument} {name!r} is a learned image codec, which trains with {how} (docs/codec.md), not "
                     "with kerasae's autoencoder training")


def unknown_preset_message(name):
    """"unknown preset 'x'; did you mean 'y'?" and where the full list is (not all of its names)."""
    from kerasae.options import did_you_mean

    return (f"unknown preset {name!r}{did_you_mean(name, PRESETS)} ({len(PRESETS)} presets: `kerasae train "
            "--list-presets` or kerasae.list_presets())")


def valid_keywords(cls):
    """Every constructor argument of `cls`, including those it forwards to its bases."""
    names = {"name"}
    for klass in cls.__mro__:
        if klass.__module__.partition(".")[0] == "keras":  # Keras' Model and Layer: **kwargs, no model settings
            break
        if "__init__" in vars(klass):
            names.update(p.name for p in inspect.signature(klass.__init__).parameters.values()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
    return sorted(names)


def check_keywords(cls, kwargs):
    valid = valid_keywords(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown keyword(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(valid)}")


def preset_kwargs(name, /, **overrides):
    """The constructor kwargs of preset `name` with `overrides` applied (checked; `name=` is the model's name)."""
    preset = get_preset(name)
    check_keywords(preset.cls, overrides)
    return {**preset.kwargs, **overrides}


def build(name, /, **overrides):
    """Build preset `name`, e.g. `build("vae-mlp", latent_dim=16, image_shape=(32, 32, 3))`."""
    return get_preset(name).cls(**preset_kwargs(name, **overrides))


# The built-in classes' families, so registering them imports nothing.
_AE, _DAE, _VAE = "kerasae.models:Autoencoder", "kerasae.models:DenoisingAutoencoder", "kerasae.models:VAE"
_HVAE, _CVAE, _VQVAE = "kerasae.models:HierarchicalVAE", "kerasae.models:ConditionalVAE", "kerasae.models:VQVAE"
_BUILTIN_FAMILIES = {_AE: "ae", _DAE: "dae", _VAE: "vae", _HVAE: "vae", _CVAE: "cvae", _VQVAE: "vqvae",
                     **{path: CODEC_FAMILY for path in ladder.CODEC_CLASSES.values()}}

_MLP = dict(arch="mlp", hidden_units=(512, 256))
_CONV = dict(arch="conv", filters=(32, 64), hidden_units=())

register_preset("ae-mlp-seed", _AE,
                "The classic deep MLP autoencoder 784-512-256-128-32-2-32-128-256-512-784 (2-D code).",
                arch="mlp", hidden_units=(512, 256, 128, 32), latent_dim=2)
register_preset("ae-shallow", _AE, "Shallow AE: one Dense layer each way, 784-32-784.",
                arch="mlp", hidden_units=(), latent_dim=32)
register_preset("ae-conv", _AE, "Convolutional AE: conv 32-64 (stride 2), 16-D code.", **_CONV, latent_dim=16)
register_preset("ae-sparse", _AE, "Sparse AE: 784-512-128 with an L1 penalty on a ReLU code.",
                arch="mlp", hidden_units=(512,), latent_dim=128, code_activation="relu",
                sparsity="l1", sparsity_weight=0.1)
register_preset("ae-sparse-kl", _AE,
                "Sparse AE: 784-512-128 sigmoid code pulled to a mean activation of 0.05 by a KL penalty.",
                arch="mlp", hidden_units=(512,), latent_dim=128, code_activation="sigmoid",
                sparsity="kl", sparsity_weight=1.0, sparsity_target=0.05)
register_preset("ae-contractive", _AE,
                "Contractive AE: 784-512-64, penalty 0.1 * ||dz/dx||_F^2 on the encoder's Jacobian.",
                arch="mlp", hidden_units=(512,), latent_dim=64, contractive_weight=0.1)
register_preset("dae-mlp", _DAE, "Denoising MLP AE 784-512-256-64, gaussian noise std 0.5.",
                **_MLP, latent_dim=64, noise_type="gaussian", noise_level=0.5)
register_preset("dae-conv", _DAE, "Denoising conv AE, conv 32-64, 32-D code, gaussian noise std 0.5.",
                **_CONV, latent_dim=32, noise_type="gaussian", noise_level=0.5)
register_preset("vae-mlp", _VAE, "MLP VAE 784-512-256-32, Bernoulli decoder (dynamically binarized data).",
                **_MLP, latent_dim=32, likelihood="bernoulli")
register_preset("vae-mlp-2d", _VAE, "MLP VAE with a 2-D latent, Bernoulli decoder: for latent plots and manifolds.",
                **_MLP, latent_dim=2, likelihood="bernoulli")
register_preset("vae-conv", _VAE, "Convolutional VAE, conv 32-64, 32-D latent, Bernoulli decoder.",
                **_CONV, latent_dim=32, likelihood="bernoulli")
register_preset("vae-mlp-gaussian", _VAE,
                "MLP VAE 784-512-256-32 with a Gaussian decoder (learned shared std) on intensities in [0, 1].",
                **_MLP, latent_dim=32, likelihood="gaussian", gaussian_scale="shared")
register_preset("vae-mlp-vamp", _VAE, "MLP VAE 784-512-256-32 with a VampPrior (500 learned pseudo-inputs), "
                "Bernoulli decoder.", **_MLP, latent_dim=32, likelihood="bernoulli", prior_type="vamp",
                num_pseudo_inputs=500)
# Two stochastic layers (z1, z2: 40 each) in the layout of Tomczak & Welling's HVAE, ReLU where they gate.
_HIERARCHICAL = dict(arch="mlp", hidden_units=(300, 300), latent_dims=(40, 40), stochastic_units=300,
                     likelihood="bernoulli")
register_preset("hvae-mlp", _HVAE, "Two-layer hierarchical MLP VAE: q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2), "
                "z1 and z2 40-D, Dense 300s, Bernoulli decoder.", **_HIERARCHICAL)
register_preset("hvae-mlp-vamp", _HVAE, "The two-layer hierarchical MLP VAE with a VampPrior on z2 (500 learned "
                "pseudo-inputs).", **_HIERARCHICAL, prior_type="vamp", num_pseudo_inputs=500)
register_preset("iwae-mlp", _VAE, "MLP VAE 784-512-256-32 trained on the IWAE bound with k=5 samples.",
                **_MLP, latent_dim=32, likelihood="bernoulli", num_importance_samples=5)

register_preset("cvae-mlp", _CVAE, "Conditional MLP VAE 784(+10)-512-256-32, Bernoulli decoder: q(z|x, y), "
                "p(x|z, y) for 10 classes.", **_MLP, latent_dim=32, likelihood="bernoulli", num_classes=10)
register_preset("cvae-conv", _CVAE, "Conditional conv VAE, conv 32-64 (the label as 10 constant input planes), "
                "32-D latent, Bernoulli decoder.", **_CONV, latent_dim=32, likelihood="bernoulli", num_classes=10)

# Vector-quantized: an image is L integer codes in [0, K), L * log2(K) bits.
register_preset("vqvae-conv", _VQVAE, "VQ-VAE, conv 32-64 down to a 7x7 grid of codes, codebook of K=512 vectors of "
                "size 64 (EMA updates, dead-code restarts): 49 codes, 441 bits per 28x28 image.",
                **_CONV, num_embeddings=512, embedding_dim=64)
register_preset("vqvae-mlp", _VQVAE, "VQ-VAE, MLP 784-512-256 to 8 codes from a codebook of K=256 vectors of size 16: "
                "64 bits per image.", **_MLP, num_codes=8, num_embeddings=256, embedding_dim=16)

# Residual conv stacks (pre-activation blocks, GroupNorm), one per image size, each naming its image shape.
# The filters set the final map: 28 -> 14 -> 7, 32 -> 16 -> 8, 64 -> 32 -> 16 -> 8.
_RESNET_28 = dict(arch="resnet", image_shape=(28, 28, 1), filters=(16, 32, 64), blocks_per_stage=1,
                  hidden_units=(), latent_dim=32)
_RESNET_32 = dict(arch="resnet", image_shape=(32, 32, 3), filters=(32, 64, 128), blocks_per_stage=1,
                  hidden_units=(), latent_dim=128)
_RESNET_64 = dict(arch="resnet", image_shape=(64, 64, 3), filters=(16, 32, 64, 128), blocks_per_stage=1,
                  hidden_units=(), latent_dim=256)
_NOISE = dict(noise_type="gaussian", noise_level=0.5)

register_preset("ae-resnet-28", _AE, "Residual conv AE for 28x28x1: stages 16-32-64 down to 7x7, 32-D code.",
                **_RESNET_28)
register_preset("ae-resnet-32", _AE, "Residual conv AE for 32x32x3: stages 32-64-128 down to 8x8, 128-D code.",
                **_RESNET_32)
register_preset("ae-resnet-64", _AE, "Residual conv AE for 64x64x3: stages 16-32-64-128 down to 8x8, 256-D code.",
                **_RESNET_64)
register_preset("dae-resnet-28", _DAE, "Denoising residual conv AE for 28x28x1 (7x7 map), 32-D code, gaussian "
                "noise std 0.5.", **_RESNET_28, **_NOISE)
register_preset("dae-resnet-32", _DAE, "Denoising residual conv AE for 32x32x3 (8x8 map), 128-D code, gaussian "
                "noise std 0.5.", **_RESNET_32, **_NOISE)
register_preset("dae-resnet-64", _DAE, "Denoising residual conv AE for 64x64x3 (8x8 map), 256-D code, gaussian "
                "noise std 0.5.", **_RESNET_64, **_NOISE)
register_preset("vae-resnet-28", _VAE, "Residual conv VAE for binarized MNIST: stages 16-32-64 down to 7x7, "
                "32-D latent, Bernoulli decoder.", **_RESNET_28, likelihood="bernoulli")
# Colour VAEs model 8-bit pixels: their -ELBO is a code length, reported in bits per dimension.
register_preset("vae-resnet-32", _VAE, "Residual conv VAE for 32x32x3: stages 32-64-128 down to 8x8, 128-D latent, "
                "discretized logistic decoder over 8-bit pixels (learned per-pixel scale).", **_RESNET_32,
                likelihood="discretized_logistic", gaussian_scale="pixel")
register_preset("vae-resnet-64", _VAE, "Residual conv VAE for 64x64x3: stages 16-32-64-128 down to 8x8, 256-D "
                "latent, discretized logistic decoder over 8-bit pixels (learned per-pixel scale).", **_RESNET_64,
                likelihood="discretized_logistic", gaussian_scale="pixel")
register_preset("vqvae-resnet-32", _VQVAE, "Residual VQ-VAE for 32x32x3: stages 32-64-128 down to an 8x8 grid of "
                "codes, K=512 vectors of size 64: 576 bits per image.", arch="resnet", image_shape=(32, 32, 3),
                filters=(32, 64, 128), blocks_per_stage=1, hidden_units=(), num_embeddings=512, embedding_dim=64,
                reconstruction_loss="mse")

# The learned image codec's quality ladder (kerasae.codec.ladder), quality 1 (fewest bytes) to 8 per class.
for _name, _class_path, _description, _kwargs in ladder.presets():
    register_preset(_name, _class_path, _description, **_kwargs)

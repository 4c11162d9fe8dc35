"""What a run trains and on what, as recorded in its config.json: the objective and the data options in effect.

Fine-tuning (`init_from`) continues a model's recipe: its objective carries over (a zoo VAE with k=5 trains the
IWAE-5 bound), its KL warm-up is not restarted unless asked (the ramp follows the new optimizer's step, so a
restart would train the first epochs with a KL weight near 0), and images are fitted to its input. `export_run`
and `evaluate` reopen the run's data with the options recorded here, so a fine-tuned run needs no extra flags.
"""

import itertools
from pathlib import Path

from kerasae import data as data_lib

#: decode_image's channel counts, as a user would name them.
_CHANNELS = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}
#: Files whose shapes are read to describe a folder's images (the first ones found).
_PEEK_FILES = 8


def training_overrides(model, model_kwargs):
    """The settings a fine-tuned `model` is cloned with: `model_kwargs`, and its KL warm-up switched off unless
    `model_kwargs` sets one (a model that finished its warm-up would otherwise start it again from 0)."""
    overrides = dict(model_kwargs)
    if getattr(model, "kl_warmup_steps", 0) and "kl_warmup_steps" not in overrides:
        overrides["kl_warmup_steps"] = 0
    return overrides


def objective(model):
    """The training objective of `model`: for VAEs the bound (ELBO or IWAE), k, beta and KL warm-up steps."""
    if hasattr(model, "num_importance_samples"):  # the VAE family (VAE, CVAE, HierarchicalVAE)
        k = int(model.num_importance_samples)
        return {"family": model.family, "bound": "elbo" if k == 1 else "iwae", "k": k, "beta": float(model.beta),
                "kl_warmup_steps": int(model.kl_warmup_steps), "likelihood": model.likelihood}
    record = {"family": model.family, "reconstruction_loss": getattr(model, "reconstruction_loss", None)}
    if getattr(model, "sparsity", None) and model.sparsity_weight > 0:  # the penalties an AE trains with
        record.update(sparsity=model.sparsity, sparsity_weight=float(model.sparsity_weight))
        if model.sparsity == "kl":
            record["sparsity_target"] = float(model.sparsity_target)
    if getattr(model, "contractive_weight", 0) > 0:
        record["contractive_weight"] = float(model.contractive_weight)
    if model.family == "vqvae":
        record.update(commitment_cost=float(model.commitment_cost), codebook_update=model.codebook_update)
    return record


def describe_objective(record, init_from=None, saved_warmup=0):
    """One line for the log, e.g. "objective: IWAE-5 bound (k=5), beta 1, no KL warm-up"."""
    if "bound" not in record:
        terms = [f"reconstruction loss ({record['reconstruction_loss']})"]
        if "sparsity" in record:
            target = f", target {record['sparsity_target']:g}" if "sparsity_target" in record else ""
            terms.append(f"{record['sparsity_weight']:g} x {record['sparsity']} sparsity penalty{target}")
        if "contractive_weight" in record:
            terms.append(f"{record['contractive_weight']:g} x contractive penalty")
        if "commitment_cost" in record:
            terms.append(f"{record['commitment_cost']:g} x commitment loss"
                         + ("" if record["codebook_update"] == "ema" else " + codebook loss"))
            terms[-1] += f" (codebook: {'moving averages' if record['codebook_update'] == 'ema' else 'its loss'})"
        return f"objective: {record['family']} " + " + ".join(terms)
    bound = "ELBO (k=1)" if record["k"] == 1 else f"IWAE-{record['k']} bound (k={record['k']})"
    warmup = (f"KL warm-up over {record['kl_warmup_steps']} steps" if record["kl_warmup_steps"]
              else "no KL warm-up")
    text = f"objective: {bound}, beta {record['beta']:g}, {warmup}"
    if init_from:
        text += f"; continued from {init_from}"
        if saved_warmup and not record["kl_warmup_steps"]:
            text += f" (its {saved_warmup}-step warm-up is not restarted; --kl-warmup-steps N restarts one)"
        if record["k"] > 1:
            text += "; --k 1 trains the ELBO"
    return text


def data_record(image_size, color_mode, image_shape, binarized, fitted_to=None, source_shape=None):
    """config.json's "data": the options the dataset was opened with (what export and evaluate reopen it with),
    the resulting image shape and the binarization the model trains and is tested on."""
    return {"image_size": None if image_size is None else [int(s) for s in image_size], "color_mode": color_mode,
            "image_shape": [int(s) for s in image_shape], "source_image_shape": source_shape,
            "fitted_to": fitted_to, "binarized": bool(binarized),
            "test_binarization_seed": data_lib.TEST_BINARIZATION_SEED if binarized else None}


def source_image_shape(spec):
    """The [H, W, C] of a dataset's images as stored, where cheap to tell without opening it: MNIST, or the
    first image files found in an images:DIR folder (H and W None when those differ). None otherwise."""
    kind, _, arg = str(spec).partition(":")
    if spec == "mnist":
        return [28, 28, 1]
    if kind != "images" or not Path(arg).is_dir():
        return None
    import tensorflow as tf

    files = (p for p in Path(arg).rglob("*") if p.suffix.lower() in data_lib.IMAGE_EXTENSIONS)  # lazily: a few
    shapes = []
    for path in itertools.islice(files, _PEEK_FILES):
        try:
            shapes.append([int(s) for s in tf.io.decode_image(tf.io.read_file(str(path)),
                                                                expand_animations=False).shape])
        except (tf.errors.OpError, ValueError):
            continue  # opening the dataset reports an unreadable file
    if not shapes:
        return None
    if any(s != shapes[0] for s in shapes):
        return [None, None, shapes[0][2]] if all(s[2] == shapes[0][2] for s in shapes) else None
    return shapes[0]


def describe_data(spec, record):
    """One line saying how the images were fitted to a fine-tuned model's input, or None when nothing was done,
    e.g. "images:DIR: RGB 40x40 -> grayscale 28x28 to fit zoo:vae_mlp_2d_mnist's input, binarized (Bernoulli
    likelihood)"."""
    h, w, c = record["image_shape"]
    target = f"{_CHANNELS[c]} {h}x{w}"
    source = record["source_image_shape"]
    parts = []
    if source is not None and source != record["image_shape"]:
        size = "images of mixed sizes" if source[0] is None else f"{source[0]}x{source[1]}"
        parts.append(f"{_CHANNELS.get(source[2], f'{source[2]}-channel')} {size} -> {target} "
                     f"to fit {record['fitted_to']}'s input")
    elif source is None:
        parts.append(f"read as {target} to fit {record['fitted_to']}'s input")
    if record["binarized"]:
        parts.append("binarized (Bernoulli likelihood)")
    return f"{spec}: {', '.join(parts)}" if parts else None

"""Training a codec of the quality ladder on random crops of the training photographs, resumable.

`train(out, family, quality, steps)` fits in chunks of `CHUNK` steps; after each it saves the model with its
optimizer (`checkpoint.keras`) and `state.json`, so the same call after an interruption goes on from the last
chunk, with the crops it would have drawn. When all steps are done it writes the `Coder` folder (`out/codec`,
entropy tables included) and `metrics.json`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kerasae import registry
from kerasae.codec import ladder
from kerasae.training import precision as precision_lib

#: The precisions a codec trains in (`train(precision=...)`, `--precision`): float16 would need loss scaling.
PRECISIONS = ("float32", "bfloat16", "auto")
#: Steps per chunk: the work an interruption can lose.
CHUNK = 200
#: A chunk whose mean loss is this many times the previous chunk's has diverged: it is not saved.
DIVERGED = 10.0
#: Steps of each factorized quality, fine-tuned from the hyperprior ladder's transforms (see LADDER_PLAN).
FACTORIZED_STEPS = 2000
#: A factorized model started from the other family's transforms first fits its prior alone: this many Adam steps
#: on the latents of this many training crops (see `_fit_prior`).
PRIOR_FIT_STEPS, PRIOR_FIT_CROPS = 300, 64
#: How the ladder is trained: (quality, steps, what it starts from: None, a quality of the same ladder,
#: "run:<folder>" (a finished run under the same root) or a codec `init_from` names). The middle quality is trained
#: from scratch; its neighbours are fine-tuned from the next quality towards the middle, which costs far fewer
#: steps than training each from scratch. (Quality 2's fine-tune, 5,000 steps, moved most of the way in its first
#: 1,600: 0.355 -> 0.300 bpp on its training crops, 0.300 -> 0.292 in the 400 after step 1,600.)
LADDER_PLAN = {
    "hyperprior": ((3, 20000, None), (2, 5000, 3), (4, 3000, 3), (1, 3000, 2), (5, 3000, 4)),
    # Each factorized quality starts from the transforms of the hyperprior of the same quality after its "refined"
    # stage (its prior is learned anew): a factorized prior needs the same analysis and synthesis, and far fewer
    # steps than from scratch. (The shipped ladder started from those runs' float16 zoo entries.)
    "factorized": tuple((q, FACTORIZED_STEPS, f"run:hyperprior_q{q}_refined") for q in (3, 2, 4, 1, 5)),
}
#: LADDER_PLAN's runs train on these training photographs (`photos.training_photos`).
LADDER_PHOTOS = "ten"
#: Then every quality goes through these stages in order, each run (<family>_q<Q>_<stage>) starting from the one
#: before it: (stage, steps, learning rate, straight_through, training photographs). The last stage is what the zoo
#: ships.
#: - straight_through: the synthesis decodes rounded latents (`ImageCodec.straight_through`). Measured on quality 3
#:   (20,000 steps of noise), 1,000 steps at 1e-4, on the 7 held-out photographs, PSNR at equal rate against JPEG's
#:   curve: -0.745 dB as trained, -0.569 dB fine-tuned with noise, -0.444 dB fine-tuned straight-through.
#: - the hyperprior's "tuned" and "tuned_refined": the factorized ladder's schedule (noise at 3e-4, then
#:   straight-through) on all 37 training photographs. Measured on quality 3 from its "refined" stage, the files of
#:   the 7 test photographs (fast encoder): 0.386 bpp / 27.86 dB before; 0.371 bpp / 27.96 dB after the same two
#:   stages on the ten; 0.346 bpp / 28.22 dB on all 37. (1,000 straight-through steps alone: 0.386 bpp / 27.90 dB.)
#: - "extended" and "extended_refined": the same pair again, longer; quality 3 0.335 bpp / 28.33 dB after them, and
#:   the ladder's BD-rate against WebP +15.0% with optimized latents (+20.0% before; docs/codec.md).
STAGES = {
    "hyperprior": (("refined", 2000, 1e-4, True, "ten"), ("tuned", 2000, 3e-4, False, "all"),
                   ("tuned_refined", 1000, 1e-4, True, "all"), ("extended", 3000, 3e-4, False, "all"),
                   ("extended_refined", 1000, 1e-4, True, "all")),
    "factorized": (("refined", 1000, 1e-4, True, "ten"),),
}


def build(family, quality, seed=0, **overrides):
    """The ladder's codec of `family` and `quality`: its registry preset (codec-<family>-q<quality>, whose kwargs
    are kerasae.codec.ladder's), named <family>_q<quality>, with `overrides` (e.g. smaller transforms)."""
    return registry.build(ladder.preset_name(family, quality), seed=seed, name=f"{family}_q{quality}", **overrides)


def _save_checkpoint(model, out, state):
    """checkpoint.keras (the model), optimizer.npz (Adam's variables, its step count included), state.json: each
    written beside and renamed, state.json last, so a state names a checkpoint that is whole."""
    from kerasae.files import atomic_path, write_json

    with atomic_path(out / "checkpoint.keras", suffix=".keras") as tmp:
        model.save(tmp)
    with atomic_path(out / "optimizer.npz", suffix=".npz") as tmp:
        np.savez(tmp, *[v.numpy() for v in model.optimizer.variables])
    write_json(out / "state.json", state)


def _compile(model, learning_rate, steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    # Gradients clipped to a global norm of 1 (as CompressAI trains these models): Adam's steps barely change
    # (it divides by the gradients' running scale), but a spike can no longer throw the model off. Measured on
    # 8 crops of 128 x 128: norms 140-245 at initialization, 29-47 after 4,600 steps; an unclipped run at learning
    # rate 3e-4 diverged at step ~2,500 (loss 1e9).
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0))


def _resume(out, state):
    """The model and optimizer of the last checkpoint (loaded the safe way: weights, then Adam's variables)."""
    from kerasae.files import load_keras_model

    model = load_keras_model(out / "checkpoint.keras")
    _compile(model, state["learning_rate"], state["steps"])
    model.optimizer.build(model.trainable_variables)
    with np.load(out / "optimizer.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(model.optimizer.variables):
        raise ValueError(f"{out}/optimizer.npz holds {len(values)} variables, the optimizer has "
                         f"{len(model.optimizer.variables)}")
    for variable, value in zip(model.optimizer.variables, values):
        variable.assign(value)
    return model


def _policy(precision):
    """kerasae.training.precision's choice for codec training, which runs in float32 or mixed bfloat16 (float16
    would need loss scaling)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {', '.join(map(repr, PRECISIONS[:-1]))} or {PRECISIONS[-1]!r} for a "
                         f"codec, got {precision!r}")
    chosen = precision_lib.choose(precision)
    return chosen if chosen["policy"] in ("float32", "mixed_bfloat16") else precision_lib.choose("float32")


def _source_model(init_from):
    """The model of a checkpoint.keras file, a saved codec's folder (Coder.save) or "zoo:<codec entry>"."""
    from kerasae.codec.api import load_coder
    from kerasae.files import load_keras_model

    text = str(init_from)
    if text.startswith("zoo:"):
        return load_coder(text[len("zoo:"):]).model
    source = Path(init_from)
    if (source / "codec.json").is_file():
        return load_coder(source).model
    if source.is_file():
        return load_keras_model(source)
    raise ValueError(f"init_from must be a checkpoint.keras file, a saved codec's folder or zoo:<codec entry>, got "
                     f"{text!r}")


def _training_images(photo_set):
    """(the training photographs of `photo_set`, the validation photograph)."""
    from kerasae.codec import photos

    return ([photos.load(p) for p in photos.training_photos(photo_set)],
            photos.validation_image())


def _initialize(model, source):
    """Copy `source`'s weights into `model`: all of them for the same class, else the analysis and synthesis
    transforms (whose shapes must match); -> whether only the transforms were copied."""
    parts = ("analysis", "synthesis") if type(source) is not type(model) else None
    pairs = [(getattr(model, p), getattr(source, p)) for p in parts] if parts else [(model, source)]
    for target, origin in pairs:
        mine, theirs = target.get_weights(), origin.get_weights()
        if [w.shape for w in mine] != [w.shape for w in theirs]:
            raise ValueError(f"init_from: {type(source).__name__} {source.name}'s {target.name} weights have other "
                             f"shapes than {model.name}'s (filters {getattr(source, 'filters', '?')} and "
                             f"{model.filters}, latent_channels {getattr(source, 'latent_channels', '?')} and "
                             f"{model.latent_channels})")
        target.set_weights(theirs)
    return parts is not None


def _fit_prior(model, crops, seed, steps=PRIOR_FIT_STEPS, learning_rate=1e-2):
    """Fit a factorized model's prior alone to the latents its (copied) analysis gives `crops`, under training's
    noise: the rate it would pay. Adam at the fine-tuning's learning rate moves the prior's parameters too little:
    measured on quality 3 from the hyperprior's transforms, the centre of the validation photo cost 2.3 bpp after
    600 steps of fine-tuning at 3e-4 (the hyperprior: 0.59). Fitted here first, it costs 0.63 after 250 steps
    (2.70 before; 0.63 after 500 and 1,000 too), and the fine-tuning starts from there."""
    import keras
    import tensorflow as tf

    y = tf.concat([model.analysis(crops[i:i + 16]) for i in range(0, len(crops), 16)], axis=0)
    variables = model.prior.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)

    @tf.function
    def step(i):
        noise = tf.random.stateless_uniform(tf.shape(y), [seed, i], -0.5, 0.5)
        with tf.GradientTape() as tape:
            bits = -tf.reduce_mean(tf.math.log(model.prior(y + noise)))
        optimizer.apply(tape.gradient(bits, variables), variables)

    for i in range(steps):
        step(tf.constant(i))


def train(out, family="hyperprior", quality=3, steps=20000, init_from=None, crop=128, batch_size=8,
          learning_rate=3e-4, scales=(0.125, 0.5), seed=0, images=None, photo_set="all", log=print,
          precision="float32", **model_overrides):
    """Train (or go on training) one codec into folder `out`; -> its metrics dict.

    init_from: what starts this model: a checkpoint.keras, a saved codec's folder or "zoo:<codec entry>"; all its
        weights where it is the same kind of codec (a neighbouring quality), its analysis and synthesis transforms
        where it is the other family.
    images: uint8 [H, W, 3] arrays to crop (default: the training photographs of `photo_set`, "all" or "ten": see
        `photos.training_photos`; a resumed run keeps its own).
    scales: crops are downscaled by factors drawn log-uniformly from (low, high) (see `photos.random_crops`: 1/8 to
    1/2 gives the 2560-pixel wallpapers the detail per pixel of the 300- to 640-pixel test photos).
    The learning rate decays with a cosine to 5% over `steps`.
    precision: "float32", "bfloat16" (the transforms' hidden layers in mixed_bfloat16: see `ImageCodec`) or "auto"
        (bfloat16 on a CPU with bfloat16 matrix instructions, kerasae.training.precision); a resumed run keeps the
        precision it started with. The saved codec computes in float32 either way.
    """
    from kerasae.codec import photos
    from kerasae.codec.coder import Coder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").is_file() else None
    # given images, the first one's centre stands in for the validation photo
    if images is None:  # runs saved before photo sets existed trained on the ten
        images, validation = _training_images(state.get("photo_set", "ten") if state else photo_set)
    else:
        images, validation, photo_set = images, images[0], None
    if state is not None:
        model = _resume(out, state)
    else:
        chosen = _policy(precision)
        with precision_lib.global_policy(chosen["policy"]):
            model = build(family, quality, seed=seed, **model_overrides)
        log(f"{out.name}: {precision_lib.describe(chosen)}")
        if init_from is not None and _initialize(model, _source_model(init_from)) and hasattr(model, "prior"):
            _fit_prior(model, photos.random_crops(images, crop, PRIOR_FIT_CROPS, np.random.default_rng(seed),
                                                  scales=tuple(scales)), seed)
        _compile(model, learning_rate, steps)
        state = {"step": 0, "seconds": 0.0, "history": [], "family": family, "quality": quality,
                 "init_from": None if init_from is None else str(init_from), "crop": crop,
                 "batch_size": batch_size, "learning_rate": learning_rate, "steps": steps, "scales": list(scales),
                 "precision": chosen["policy"], "photo_set": photo_set}
    # One `fit` for the run's equal chunks (a chunk is an epoch): one input pipeline, one iterator. Each chunk's
    # crops are seeded by its first step, so a resumed run draws the crops the uninterrupted one would have.
    while state["step"] < steps:
        chunk = min(CHUNK, steps - state["step"])
        chunks = (steps - state["step"]) // chunk
        data = photos.crop_dataset(images, state["crop"], state["batch_size"], chunk * chunks,
                                   seed=seed * 100003 + state["step"], scales=tuple(state["scales"]),
                                   reseed_every=chunk)
        saver = _chunk_callback(model, out, state, chunk, validation, log, steps)
        model.fit(data, epochs=chunks, steps_per_epoch=chunk, shuffle=False, verbose=0, callbacks=[saver])
    coder_dir = out / "codec"
    if not coder_dir.exists():
        Coder(model, name=model.name).save(coder_dir)
    metrics = {k: state[k] for k in state if k != "history"}
    metrics["final"] = state["history"][-1] if state["history"] else {}
    metrics["parameters"] = int(model.count_params())
    metrics["cpu"] = _cpu()
    from kerasae.files import write_json

    write_json(out / "metrics.json", metrics)
    return metrics


def _chunk_callback(model, out, state, chunk, validation, log, steps):
    """A Keras callback for the end of each chunk (an epoch of the run's one `fit`): validation, checkpoint, a log
    line. (A LambdaCallback, so that importing this module, e.g. for `train_codec.py --help`, loads no Keras.)"""
    import keras

    started = {}

    def begin(epoch, logs=None):
        started["at"] = time.time()

    def end(epoch, logs=None):
        loss = float((logs or {}).get("loss", np.nan))
        previous = state["history"][-1]["loss"] if state["history"] else None
        if not np.isfinite(loss) or (previous is not None and loss > DIVERGED * previous):
            raise FloatingPointError(
                f"{out.name}: training diverged in steps {state['step']}-{state['step'] + chunk} (loss {loss:.4g} "
                f"after {previous}); the checkpoint of step {state['step']} is kept")
        state["seconds"] += time.time() - started["at"]
        state["step"] += chunk
        record = {"step": state["step"], **{k: round(float(v), 5) for k, v in (logs or {}).items()},
                  **_validation(model, validation)}
        state["history"].append(record)
        _save_checkpoint(model, out, state)
        log(f"{out.name}: step {state['step']}/{steps} "
            + " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step") + f" ({state['seconds']:.0f} s)")

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def _cpu():
    """The CPU a run's seconds were measured on: model name, cores, AVX-512 and AMX."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(text.split())
    return {"model": model, "cores": os.cpu_count(), "avx512": "avx512f" in flags, "amx": "amx_tile" in flags}


def _validation(model, image, size=256):
    """bpp and PSNR with rounded latents (the rate the model estimates) of the centre of the validation photo:
    what the training metrics under noise do not show."""
    h, w = image.shape[:2]
    side = min(size, h, w) // model.stride * model.stride
    if side == 0:
        return {}
    r, c = (h - side) // 2, (w - side) // 2
    terms = model.compute_terms(image[None, r:r + side, c:c + side].astype(np.float32) / 255.0)
    return {"val_bpp": round(float(terms["bpp"][0]), 5), "val_psnr": round(float(terms["psnr"][0]), 4)}


def train_ladder(root, family="hyperprior", log=print, **kwargs):
    """Every quality of `family` in LADDER_PLAN's order, into root/<family>_q<Q>, then through each of STAGES'
    stages into root/<family>_q<Q>_<stage>; resumable like `train` (`kwargs`: more of its arguments, for every run).
    -> {quality: metrics of its final run}."""
    root = Path(root)
    results = {}

    def photos_of(photo_set):  # given images (tests) stand for every photo set
        return {} if "images" in kwargs else {"photo_set": photo_set}

    for quality, steps, start in LADDER_PLAN[family]:
        results[quality] = train(stage_run(root, family, quality), family, quality, steps,
                                 init_from=_start(root, family, quality, start), log=log,
                                 **photos_of(LADDER_PHOTOS), **kwargs)
    for quality, _, _ in LADDER_PLAN[family]:
        before = stage_run(root, family, quality)
        for stage, steps, learning_rate, straight_through, photo_set in STAGES.get(family, ()):
            run = stage_run(root, family, quality, stage)
            results[quality] = train(run, family, quality, steps, init_from=before / "codec",
                                     learning_rate=learning_rate, straight_through=straight_through, log=log,
                                     **photos_of(photo_set), **kwargs)
            before = run
    return results


def _start(root, family, quality, start):
    """What LADDER_PLAN's `start` names, for `train(init_from=...)`."""
    if isinstance(start, int):
        return stage_run(root, family, start) / "codec"
    if isinstance(start, str) and start.startswith("run:"):
        codec = root / start[len("run:"):] / "codec"
        if not (codec / "codec.json").is_file():
            other = start[len("run:"):].split("_q")[0]
            raise ValueError(f"the {family} ladder's quality {quality} starts from {codec}, which is not there: run "
                             f"train_codec.py --family {other} --root {root} first")
        return codec
    return start


def stage_run(root, family, quality, stage=None):
    """The run folder of a quality's LADDER_PLAN run (stage None) or of one of its STAGES."""
    return Path(root) / (f"{family}_q{quality}" if stage is None else f"{family}_q{quality}_{stage}")


def final_run(root, family, quality):
    """The run folder of a quality's last stage (STAGES), what the zoo ships."""
    stages = STAGES.get(family, ())
    return stage_run(root, family, quality, stages[-1][0] if stages else None)


def main(argv=None):
    """`python scripts/train_codec.py --family hyperprior [--quality Q --steps N] --root runs/codec`."""
    from kerasae.codec import photos

    p = argparse.ArgumentParser(prog="train_codec.py", description="Train the codec ladder (resumable: run the "
                                "same command again after an interruption).")
    p.add_argument("--family", choices=sorted(LADDER_PLAN), default="hyperprior")
    p.add_argument("--quality", type=int, help="one quality only (default: the whole ladder, LADDER_PLAN)")
    p.add_argument("--steps", type=int, default=12000, help="with --quality (default: 12000)")
    p.add_argument("--photos", choices=photos.TRAINING_SETS, default="all",
                   help="with --quality: the training photographs, all or the ten the ladders' first stages used "
                        "(default: all)")
    p.add_argument("--root", default="runs/codec", help="folder of the runs (default: runs/codec)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32, or bfloat16 for the transforms' hidden layers (fast on CPUs with AMX or "
                        "AVX512-BF16; docs/codec.md), or auto (default: float32; a resumed run keeps its own)")
    p.add_argument("--ship", metavar="ZOO_DIR", help="then put the finished ladder into ZOO_DIR (e.g. exported/) "
                   "as float16 entries")
    args = p.parse_args(argv)

    def log(line):
        print(line, flush=True)

    try:
        if args.quality is None:
            train_ladder(args.root, args.family, log=log, precision=args.precision)
        else:
            train(stage_run(args.root, args.family, args.quality), args.family, args.quality, args.steps, log=log,
                  precision=args.precision, photo_set=args.photos)
        if args.ship:
            from kerasae.codec import shipping

            shipping.ship(args.root, args.ship, args.family, log=log)
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as err:
        print(f"train_codec.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1 if isinstance(err, FloatingPointError) else 2  # 2: bad input
    return 0

"""The SavedModel: its signature contract, how the Keras model's methods become its signatures, writing it.

`expected_signatures` is the contract (exported/README.md documents it), `_endpoints` builds the
functions behind it from a kerasae model, `write_saved_model` writes them with Keras'
ExportArchive, and `saved_model_signatures` reads a loaded SavedModel back into the contract's
form so a written (or shipped) SavedModel can be compared with what it should be.
`keras_outputs` is the same contract computed by the Keras model itself (for parity checks).
"""

import json

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae.options import SCALED_LIKELIHOODS, SIGNATURES


def _spec(shape, dtype="float32"):
    return {"shape": list(shape), "dtype": dtype}


def _scaled(model):
    """Whether decode returns the decoder's scale (Gaussian std, logistic scale) rather than logits."""
    return model.family in ("vae", "cvae") and model.likelihood in SCALED_LIKELIHOODS


def num_classes(model):
    """A conditional model's number of classes (its signatures take a `label`), else None."""
    return model.num_classes if getattr(model, "conditional", False) else None


def example_labels(n, classes):
    """Labels for n example inputs of a conditional model, cycling through its classes (None: unconditional)."""
    return None if classes is None else (np.arange(n) % classes).astype(np.int32)


def _code_dtype(model):
    """float32 codes z, or a VQ-VAE's int32 code indices."""
    return tf.int32 if model.family == "vqvae" else tf.float32


def expected_signatures(model):
    """The contract: signature -> {"inputs": {key: spec}, "outputs": {key: spec}}, spec = {shape, dtype}.

    A conditional model's signatures also take `label`: int32 [batch], a scalar for `sample` (one class).
    A VQ-VAE's z is int32 code indices [batch, L].
    """
    h, w, c = model.image_shape
    image, code = _spec([None, h, w, c]), _spec([None, model.latent_dim], _code_dtype(model).name)
    vae = model.family in ("vae", "cvae")
    labels = {"label": _spec([None], "int32")} if num_classes(model) else {}
    recon = {"inputs": {"x": image, **labels}, "outputs": {"reconstruction": image}}
    return {
        "serving_default": recon,
        "reconstruct": recon,
        "encode": {"inputs": {"x": image, **labels},
                   "outputs": {"z_mean": code, "z_log_var": code} if vae else {"z": code}},
        "decode": {"inputs": {"z": code, **labels},
                   "outputs": {"x_mean": image, ("x_scale" if _scaled(model) else "logits"): image}},
        "sample": {"inputs": {"num_samples": _spec([], "int32"), **({"label": _spec([], "int32")} if labels else {})},
                   "outputs": {"z": code, "x_mean": image}},
        "score": {"inputs": {"x": image, **labels}, "outputs": {"score": _spec([None])}},
    }


def score_definition(model):
    """What the `score` signature returns for this model, in words (for the manifest)."""
    if model.family in ("vae", "cvae"):
        bits = ("; p(x|z) is a probability of the 8-bit image, so / (H*W*C*ln 2) gives bits/dim"
                if model.likelihood == "discretized_logistic" else "")
        given = ", y" if model.family == "cvae" else ""
        kl = (f"KL(q(z|x{given}) || N(0, I))" if model.prior_type == "standard" else
              "Hershey & Olsen's approximation of KL(q(z|x) || VampPrior)")
        if hasattr(model, "latent_dims"):
            kl = (f"{kl.replace('z|x', 'z2|x')} + KL(q(z1|x, z2) || p(z1|z2)) at z2 = its posterior mean "
                  "(z = [z1, z2])")
        return (f"negative ELBO at the posterior mean, nats per image: -log p(x | z = z_mean{given}) "
                f"({model.likelihood} decoder) + {kl}{bits}; deterministic")
    if model.family == "vqvae":
        what = {"bce": "binary cross-entropy of x against sigmoid(logits) summed over pixels, nats per image",
                "mse": "squared error sum((sigmoid(logits) - x)^2) over pixels, per image (not nats)"}
        return (f"{what[model.reconstruction_loss]}, of the reconstruction from the quantized codes (the "
                f"{model.num_codes} codes of an image are {model.bits_per_image:g} bits); deterministic")
    if model.reconstruction_loss == "bce":
        return ("reconstruction negative log-likelihood, nats per image: binary cross-entropy of x against "
                "sigmoid(logits) summed over pixels (-log p(x|z) under a Bernoulli decoder for binary x); "
                "deterministic")
    return "squared error sum((sigmoid(logits) - x)^2) over pixels, per image (not nats); deterministic"


def _endpoints(model):
    """(name, fn, input signature) per signature, in SIGNATURES order; the dict keys are the contract.

    A conditional model's functions take a label too; in a graph a label outside [0, classes)
    cannot raise, so it makes that example's outputs NaN (`flag_bad_labels`).
    """
    h, w, c = model.image_shape
    x_spec = tf.TensorSpec([None, h, w, c], tf.float32, name="x")
    z_spec = tf.TensorSpec([None, model.latent_dim], _code_dtype(model), name="z")
    n_spec = tf.TensorSpec([], tf.int32, name="num_samples")
    classes = num_classes(model)
    vae = model.family in ("vae", "cvae")
    f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731  (mixed-precision models compute in float16)

    def check(t, spec):
        # A loaded signature checks its inputs' dtype but not their shape: [2, 56, 28, 1] would flatten into
        # two images' worth of rows and give a plausible answer of the wrong size. Enforce the spec's shape.
        return tf.ensure_shape(t, spec.shape)

    def with_label(fn, *specs):
        """fn(*inputs, labels) and its input signature: labels [B] (scalar for sample) for a conditional model."""
        if not classes:
            return (lambda *inputs: fn(*[check(t, s) for t, s in zip(inputs, specs)], ())), list(specs)
        from kerasae.models.cvae import flag_bad_labels

        label_spec = tf.TensorSpec([] if specs[0] is n_spec else [None], tf.int32, name="label")

        def conditional(*inputs):
            *inputs, label = [check(t, s) for t, s in zip(inputs, (*specs, label_spec))]
            out = fn(*inputs, (label,))
            labels = tf.fill(tf.reshape(tf.maximum(inputs[0], 0), [1]), label) if label.shape.rank == 0 else label
            # (score flags itself; sample's z is drawn whatever the label)
            return {k: v if k in ("score", "z") else flag_bad_labels(labels, classes, v) for k, v in out.items()}

        return conditional, [*specs, label_spec]

    def reconstruct(x, label):
        return {"reconstruction": f32(model.reconstruct(x, *label))}

    def encode(x, label):
        if vae:
            mean, log_var = model.encode(x, *label)
            return {"z_mean": f32(mean), "z_log_var": f32(log_var)}
        z = model.encode(x)
        return {"z": z if model.family == "vqvae" else f32(z)}

    def decode(z, label):
        if _scaled(model):  # one decoder pass for both (its scale may come from the decoder)
            loc, scale = model.decoder_params(z, *label)
            return {"x_mean": loc, "x_scale": scale}
        logits = model.decode_logits(z, *label)
        return {"x_mean": tf.sigmoid(logits), "logits": logits}  # x_mean == model.decode(z)

    def sample(num_samples, label):
        # tf.random.normal (a stateful op, fresh per call) converts to TFLite's RANDOM_STANDARD_NORMAL
        # builtin; keras.random with a SeedGenerator would need Flex ops LiteRT cannot run.
        n = tf.maximum(num_samples, 0)
        z = model.sample_codes(n)  # seed None: stateful ops
        labels = [tf.fill(tf.reshape(n, [1]), label[0])] if label else []
        return {"z": z, "x_mean": model.decode(z, *labels)}

    def score(x, label):
        # NaN for an example with a NaN or Inf pixel (`flag_non_finite` in the model's score), never a number
        return {"score": f32(model.score(x, *label))}

    fns = {"reconstruct": (reconstruct, x_spec), "encode": (encode, x_spec), "decode": (decode, z_spec),
           "sample": (sample, n_spec), "score": (score, x_spec)}
    return [(name, *with_label(*fns[name])) for name in SIGNATURES]


def keras_outputs(model, signature, **inputs):
    """What the Keras model's own methods return for a signature's inputs, under the contract's keys.

    For sample (random), pass z instead of num_samples: x_mean = model.decode(z) (a conditional model's
    with its label for every z).
    """
    label = inputs.get("label")
    labels = () if label is None else (label,)
    if signature in ("reconstruct", "serving_default"):
        return {"reconstruction": model.reconstruct(inputs["x"], *labels)}
    if signature == "encode":
        codes = model.encode(inputs["x"], *labels)
        return {"z_mean": codes[0], "z_log_var": codes[1]} if isinstance(codes, tuple) else {"z": codes}
    if signature == "score":
        return {"score": model.score(inputs["x"], *labels)}
    if signature == "sample" and labels:
        labels = (np.full(len(inputs["z"]), label, np.int32),)
    out = {"x_mean": model.decode(inputs["z"], *labels)}
    if signature == "decode":
        if _scaled(model):
            out["x_scale"] = model.decoder_params(inputs["z"], *labels)[1]
        else:
            out["logits"] = model.decode_logits(inputs["z"], *labels)
    return out


def _codes(loaded, images, labels=None):
    """The codes a loaded SavedModel's encode gives `images` (z, or z_mean for a VAE), as numpy."""
    feed = {} if labels is None else {"label": tf.constant(labels, tf.int32)}
    out = loaded.signatures["encode"](x=tf.constant(images, tf.float32), **feed)
    return (out["z_mean"] if "z_mean" in out else out["z"]).numpy()


def write_saved_model(model, path):
    """Write the SavedModel with every signature of the contract to `path` (which must not exist)."""
    archive = keras.export.ExportArchive()
    # Track the model's tf.Variables themselves, not via `archive.track(model)`: that lists the
    # Keras variable wrappers, which the SavedModel stores beside the tf.Variables the endpoints
    # capture, so every weight was written twice (Keras 3.15 / TF 2.21).
    archive.variables.extend(v.value for v in model.variables)
    archive.trainable_variables.extend(v.value for v in model.trainable_variables)
    archive.non_trainable_variables.extend(v.value for v in model.non_trainable_variables)
    for name, fn, spec in _endpoints(model):
        archive.add_endpoint(name, fn, spec)  # the first (reconstruct) also becomes serving_default
    archive.write_out(str(path), verbose=False)


def saved_model_signatures(loaded):
    """The signatures of a loaded SavedModel in the contract's form (from the graph, not from us)."""
    def spec(s):
        return _spec(s.shape.as_list(), s.dtype.name)

    return {key: {"inputs": {k: spec(s) for k, s in sorted(fn.structured_input_signature[1].items())},
                  "outputs": {k: spec(s) for k, s in sorted(fn.structured_outputs.items())}}
            for key, fn in sorted(loaded.signatures.items())}


def _contract_problems(actual, expected, where):
    problems = []
    for key in sorted(set(actual) | set(expected)):
        if key not in actual:
            problems.append(f"{where}: signature {key!r} is missing")
        elif key not in expected:
            problems.append(f"{where}: unexpected signature {key!r}")
        elif _normalize(actual[key]) != _normalize(expected[key]):
            problems.append(f"{where}: signature {key!r} is {actual[key]}, expected {expected[key]}")
    return problems


def _normalize(obj):
    return json.loads(json.dumps(obj, sort_keys=True))

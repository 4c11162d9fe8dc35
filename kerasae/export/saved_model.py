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
import tensorflow as tf

from kerasae.options import SCALED_LIKELIHOODS, SIGNATURES


def _spec(shape, dtype="float32"):
    return {"shape": list(shape), "dtype": dtype}


def _scaled(model):
    """Whether decode returns the decoder's scale (Gaussian std, logistic scale) rather than logits."""
    return model.family == "vae" and model.likelihood in SCALED_LIKELIHOODS


def expected_signatures(model):
    """The contract: signature -> {"inputs": {key: spec}, "outputs": {key: spec}}, spec = {shape, dtype}."""
    h, w, c = model.image_shape
    image, code = _spec([None, h, w, c]), _spec([None, model.latent_dim])
    vae = model.family == "vae"
    recon = {"inputs": {"x": image}, "outputs": {"reconstruction": image}}
    return {
        "serving_default": recon,
        "reconstruct": recon,
        "encode": {"inputs": {"x": image},
                   "outputs": {"z_mean": code, "z_log_var": code} if vae else {"z": code}},
        "decode": {"inputs": {"z": code},
                   "outputs": {"x_mean": image, ("x_scale" if _scaled(model) else "logits"): image}},
        "sample": {"inputs": {"num_samples": _spec([], "int32")}, "outputs": {"z": code, "x_mean": image}},
        "score": {"inputs": {"x": image}, "outputs": {"score": _spec([None])}},
    }


def score_definition(model):
    """What the `score` signature returns for this model, in words (for the manifest)."""
    if model.family == "vae":
        bits = ("; p(x|z) is a probability of the 8-bit image, so / (H*W*C*ln 2) gives bits/dim"
                if model.likelihood == "discretized_logistic" else "")
        return (f"negative ELBO at the posterior mean, nats per image: -log p(x | z = z_mean) "
                f"({model.likelihood} decoder) + KL(q(z|x) || N(0, I)){bits}; deterministic")
    if model.reconstruction_loss == "bce":
        return ("reconstruction negative log-likelihood, nats per image: binary cross-entropy of x against "
                "sigmoid(logits) summed over pixels (-log p(x|z) under a Bernoulli decoder for binary x); "
                "deterministic")
    return "squared error sum((sigmoid(logits) - x)^2) over pixels, per image (not nats); deterministic"


def _endpoints(model):
    """(name, fn, input signature) per signature, in SIGNATURES order; the dict keys are the contract."""
    h, w, c = model.image_shape
    x_spec = [tf.TensorSpec([None, h, w, c], tf.float32, name="x")]
    z_spec = [tf.TensorSpec([None, model.latent_dim], tf.float32, name="z")]
    n_spec = [tf.TensorSpec([], tf.int32, name="num_samples")]
    vae = model.family == "vae"
    f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731  (mixed-precision models compute in float16)

    def check(t, spec):
        # A loaded signature checks its inputs' dtype but not their shape: [2, 56, 28, 1] would flatten into
        # two images' worth of rows and give a plausible answer of the wrong size. Enforce the spec's shape.
        return tf.ensure_shape(t, spec[0].shape)

    def reconstruct(x):
        x = check(x, x_spec)
        return {"reconstruction": f32(model.reconstruct(x))}

    def encode(x):
        x = check(x, x_spec)
        if vae:
            mean, log_var = model.encode(x)
            return {"z_mean": f32(mean), "z_log_var": f32(log_var)}
        return {"z": f32(model.encode(x))}

    def decode(z):
        z = check(z, z_spec)
        if _scaled(model):  # one decoder pass for both (its scale may come from the decoder)
            loc, scale = model.decoder_params(z)
            return {"x_mean": loc, "x_scale": scale}
        logits = model.decode_logits(z)
        return {"x_mean": tf.sigmoid(logits), "logits": logits}  # x_mean == model.decode(z)

    def sample(num_samples):
        # tf.random.normal (a stateful op, fresh per call) converts to TFLite's RANDOM_STANDARD_NORMAL
        # builtin; keras.random with a SeedGenerator would need Flex ops LiteRT cannot run.
        num_samples = check(num_samples, n_spec)
        z = model.sample_codes(tf.maximum(num_samples, 0))  # seed None: stateful ops
        return {"z": z, "x_mean": model.decode(z)}

    def score(x):
        # NaN for an example with a NaN or Inf pixel (`flag_non_finite` in the model's score), never a number
        return {"score": f32(model.score(check(x, x_spec)))}

    fns = {"reconstruct": (reconstruct, x_spec), "encode": (encode, x_spec), "decode": (decode, z_spec),
           "sample": (sample, n_spec), "score": (score, x_spec)}
    return [(name, *fns[name]) for name in SIGNATURES]


def keras_outputs(model, signature, **inputs):
    """What the Keras model's own methods return for a signature's inputs, under the contract's keys.

    For sample (random), pass z instead of num_samples: x_mean = model.decode(z).
    """
    if signature in ("reconstruct", "serving_default"):
        return {"reconstruction": model.reconstruct(inputs["x"])}
    if signature == "encode":
        codes = model.encode(inputs["x"])
        return {"z_mean": codes[0], "z_log_var": codes[1]} if model.family == "vae" else {"z": codes}
    if signature == "score":
        return {"score": model.score(inputs["x"])}
    out = {"x_mean": model.decode(inputs["z"])}
    if signature == "decode":
        if _scaled(model):
            out["x_scale"] = model.decoder_params(inputs["z"])[1]
        else:
            out["logits"] = model.decode_logits(inputs["z"])
    return out


def _codes(loaded, images):
    """The codes a loaded SavedModel's encode gives `images` (z, or z_mean for a VAE), as numpy."""
    out = loaded.signatures["encode"](x=tf.constant(images, tf.float32))
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

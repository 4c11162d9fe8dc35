"""Export kerasae models for use without kerasae: TF Serving SavedModels and TFLite files.

    exported/<name>/<version>/          a SavedModel (TF Serving reads integer version dirs as they are)
        saved_model.pb, variables/, fingerprint.pb
        assets.extra/manifest.json      what was exported, from what, and the sha256 of every file
    exported/<name>/tflite/             the TFLite files of the latest export, one per signature and variant
        <signature>.<variant>.tflite    variants: fp32, fp16, dynamic, int8
        manifest.json                   the same manifest, so the folder can ship to a device on its own

Every signature takes and returns float32 tensors under fixed key names, batch dimension
None, images NHWC in [0, 1] (see `expected_signatures` and exported/README.md):

    serving_default = reconstruct   {x} -> {reconstruction}
    encode                          {x} -> {z} (AE/DAE) or {z_mean, z_log_var} (VAE)
    decode                          {z} -> {x_mean, logits} (AE, Bernoulli VAE) or {x_mean, x_scale} (Gaussian VAE)
    sample                          {num_samples} (int32 scalar) -> {z, x_mean}
    score                           {x} -> {score}, nats per example (see `score_definition`)

The archive is built with `keras.export.ExportArchive`: wrapping a Keras 3 model in a plain
`tf.Module` gives a SavedModel whose TFLite conversion silently yields NaNs. Each TFLite file
is converted from one signature with TFLite builtin ops only, loaded in LiteRT, checked for
non-builtin ops and compared with the SavedModel on real images before anything is committed.
An export is built in a temporary directory next to its target and renamed into place, so a
reader never sees half a version.
"""

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae import fp16 as fp16_lib
from kerasae.files import json_text, library_versions, load_keras_model, sha256_file
from kerasae.options import SIGNATURES, VARIANTS, check_name, check_tflite_signatures, check_variants  # noqa: F401

MANIFEST = "manifest.json"
FORMAT = "kerasae-export/1"
#: Images the TFLite files are compared with the SavedModel on (the issue's 256 test images).
NUM_PARITY_IMAGES = 256
#: Training images an int8 file is calibrated on (export_run's default).
NUM_REPRESENTATIVE_IMAGES = 500
#: Representative images the fp16 weights are rounded on (see kerasae.fp16).
NUM_FP16_CALIBRATION_IMAGES = 2000
#: Parity tolerances: variant -> (metric, bound, outputs it applies to; None: every output).
#: max_diff is max |tflite - savedmodel| / max(1, max |savedmodel|), per output: the absolute
#: error for outputs within [-1, 1] (images) and the error relative to the output's largest
#: magnitude beyond (logits, codes, scores in nats), because float32 summation order alone moves
#: a 500-nat score by ~1e-4. fp16 is bounded on the images in [0, 1]; its other diffs are recorded.
PARITY_TOLERANCES = {
    "fp32": ("max_diff", 1e-5, None),
    "fp16": ("max_diff", 1e-3, ("reconstruction", "x_mean")),
    "dynamic": ("mean_abs_diff", 0.02, ("reconstruction",)),
    "int8": ("mean_abs_diff", 0.02, ("reconstruction",)),
}
#: An fp32 file this far off (max_diff), or with a non-finite output, is a broken conversion
#: (e.g. uninitialized variables giving NaN): the export always fails. Milder misses are flagged.
BROKEN_FP32 = 1e-3
#: max_diff allowed between a SavedModel signature and the Keras model method it exports.
KERAS_TOLERANCE = 1e-5
#: Ops an int8 file may run in float: the boundary (de)quantization and the N(0, I) draw of
#: `sample` (TFLite has no int8 random kernel; the draw is quantized at once).
_INT8_FLOAT_OK = {"QUANTIZE", "DEQUANTIZE", "RANDOM_STANDARD_NORMAL"}


class ExportError(RuntimeError):
    """An export could not be completed or checked (nothing was committed)."""


class ParityWarning(UserWarning):
    """A reduced-precision TFLite file is outside its parity bound (it was kept and flagged)."""


class VerificationError(ValueError):
    """`verify(..., strict=True)` found problems; the message lists them."""


# ---- the signature contract ---------------------------------------------------------------------

def _spec(shape, dtype="float32"):
    return {"shape": list(shape), "dtype": dtype}


def expected_signatures(model):
    """The contract: signature -> {"inputs": {key: spec}, "outputs": {key: spec}}, spec = {shape, dtype}."""
    h, w, c = model.image_shape
    image, code = _spec([None, h, w, c]), _spec([None, model.latent_dim])
    vae = model.family == "vae"
    gaussian = vae and model.likelihood == "gaussian"
    recon = {"inputs": {"x": image}, "outputs": {"reconstruction": image}}
    return {
        "serving_default": recon,
        "reconstruct": recon,
        "encode": {"inputs": {"x": image},
                   "outputs": {"z_mean": code, "z_log_var": code} if vae else {"z": code}},
        "decode": {"inputs": {"z": code},
                   "outputs": {"x_mean": image, ("x_scale" if gaussian else "logits"): image}},
        "sample": {"inputs": {"num_samples": _spec([], "int32")}, "outputs": {"z": code, "x_mean": image}},
        "score": {"inputs": {"x": image}, "outputs": {"score": _spec([None])}},
    }


def score_definition(model):
    """What the `score` signature returns for this model, in words (for the manifest)."""
    if model.family == "vae":
        return (f"negative ELBO at the posterior mean, nats per image: -log p(x | z = z_mean) "
                f"({model.likelihood} decoder) + KL(q(z|x) || N(0, I)); deterministic")
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
        logits = model.decode_logits(check(z, z_spec))
        out = {"x_mean": tf.sigmoid(logits)}  # == model.decode(z)
        if vae and model.likelihood == "gaussian":
            out["x_scale"] = tf.broadcast_to(model.decoder_scale(), tf.shape(logits))
        else:
            out["logits"] = logits
        return out

    def sample(num_samples):
        # tf.random.normal (a stateful op, fresh per call) converts to TFLite's RANDOM_STANDARD_NORMAL
        # builtin; keras.random with a SeedGenerator would need Flex ops LiteRT cannot run.
        num_samples = check(num_samples, n_spec)
        z = tf.random.normal(tf.stack([tf.maximum(num_samples, 0), model.latent_dim]))
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
        if model.family == "vae" and model.likelihood == "gaussian":
            out["x_scale"] = tf.broadcast_to(model.decoder_scale(), tf.shape(out["x_mean"]))
        else:
            out["logits"] = model.decode_logits(inputs["z"])
    return out


def _keras_parity(model, loaded, images, num_samples=16):
    """max_diff of every SavedModel signature against the Keras model's methods on `images`."""
    x = tf.constant(images, tf.float32)
    z = tf.constant(_codes(loaded, images))
    result = {}
    for signature in ("serving_default", *SIGNATURES):
        feed = {"x": x} if signature not in ("decode", "sample") else {"z": z}
        if signature == "sample":
            got = loaded.signatures["sample"](num_samples=tf.constant(num_samples, tf.int32))
            feed = {"z": got["z"]}
        else:
            got = loaded.signatures[signature](**feed)
        want = keras_outputs(model, signature, **feed)
        result[signature] = {k: _diffs(np.asarray(got[k]), np.asarray(want[k], np.float32))["max_diff"]
                             for k in sorted(want)}
    return result


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


# ---- TFLite ------------------------------------------------------------------------------------

def _litert():
    from ai_edge_litert import interpreter

    return interpreter


def _batches(arrays, key, batch_size=16):
    for i in range(0, len(arrays), batch_size):
        yield {key: np.asarray(arrays[i:i + batch_size], np.float32)}


def representative_inputs(loaded, signature, images, seed=0):
    """Calibration inputs for an int8 `signature`: a list of input dicts.

    Images for x-signatures. For decode, the codes of those images (z or z_mean) plus as many
    draws from the prior, since decode serves both reconstructions and generation. For sample,
    a few num_samples values (the decoder is calibrated on the graph's own N(0, I) draws).
    """
    images = np.asarray(images, np.float32)
    if signature == "sample":
        return [{"num_samples": np.array(32, np.int32)} for _ in range(max(1, len(images) // 32))]
    if signature == "decode":
        codes = _codes(loaded, images)
        prior = np.random.default_rng(seed).standard_normal(codes.shape).astype(np.float32)
        return list(_batches(np.concatenate([codes, prior]), "z"))
    return list(_batches(images, "x"))


def _codes(loaded, images):
    out = loaded.signatures["encode"](x=tf.constant(images, tf.float32))
    return (out["z_mean"] if "z_mean" in out else out["z"]).numpy()


def convert_tflite(saved_model_dir, signature, variant, representative=None):
    """Convert one signature of a SavedModel to TFLite bytes, builtin ops only.

    fp32: as is. fp16: float16 weights (dequantized at load, float compute; `export_model`
    then puts the biases and code/output layers back to float32, see kerasae.fp16). dynamic:
    dynamic-range quantization (int8 weights, activations quantized on the fly). int8: full
    integer quantization calibrated on `representative` (input dicts), int8 builtins only;
    inputs and outputs stay float32 (quantized/dequantized inside the graph), so every
    variant keeps the same float contract.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if not representative:
            raise ValueError("int8 conversion needs representative data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif variant != "fp32":
        raise ValueError(f"unknown TFLite variant {variant!r}; valid: {', '.join(VARIANTS)}")
    with warnings.catch_warnings():  # int8 calibration runs the deprecated tf.lite.Interpreter internally
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        return converter.convert()


def tflite_op_codes(model_bytes):
    """[(op name, custom code or None)] of a .tflite flatbuffer, read from the file itself."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    model = schema.Model.GetRootAs(model_bytes, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        custom = oc.CustomCode()
        codes.append((names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "UNKNOWN"),
                      custom.decode() if custom else None))
    return codes


def non_builtin_ops(model_bytes):
    """Names of ops that are not TFLite builtins (Flex/select-TF or custom ops); [] when clean."""
    return sorted({custom or name for name, custom in tflite_op_codes(model_bytes)
                   if custom is not None or name in ("CUSTOM", "UNKNOWN")})


def load_interpreter(model_bytes, delegates=True):
    """A LiteRT interpreter for `model_bytes`, tensors allocated; raises if any op is not a builtin.

    `delegates=False` skips the default XNNPACK delegate, whose fused DELEGATE nodes would hide
    the ops we inspect; the default (what users get) is what parity is measured with.
    """
    bad = non_builtin_ops(model_bytes)
    if bad:
        raise ExportError(f"TFLite model uses non-builtin ops {bad}")
    litert = _litert()
    kwargs = {} if delegates else {
        "experimental_op_resolver_type": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = litert.Interpreter(model_content=bytes(model_bytes), **kwargs)
    interpreter.allocate_tensors()
    if not delegates:
        runtime = sorted({op["op_name"] for op in interpreter._get_ops_details()
                          if op["op_name"].startswith("Flex") or op["op_name"] in ("CUSTOM", "UNKNOWN")})
        if runtime:
            raise ExportError(f"TFLite model runs non-builtin ops {runtime}")
    return interpreter


def _int8_float_ops(interpreter):
    """Ops of an int8 file that compute in float32 (beyond the allowed boundary ops): [] if fully integer."""
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    float_ops = set()
    for op in interpreter._get_ops_details():
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] not in _INT8_FLOAT_OK and any(tensors.get(i) == np.float32 for i in indices):
            float_ops.add(op["op_name"])
    return sorted(float_ops)


def _int8_quantization(interpreter, signature):
    """Scale/zero-point where float inputs are quantized and float outputs dequantized.

    q = round(x / scale) + zero_point, x = (q - zero_point) * scale.
    """
    runner = interpreter.get_signature_runner(signature)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()

    def params(index):
        scale, zero_point = tensors[index]["quantization"]
        return {"tensor_dtype": np.dtype(tensors[index]["dtype"]).name, "scale": float(scale),
                "zero_point": int(zero_point)}

    result = {"inputs": {}, "outputs": {}}
    for key, detail in runner.get_input_details().items():
        for op in ops:
            if op["op_name"] == "QUANTIZE" and detail["index"] in list(op["inputs"]):
                result["inputs"][key] = params(op["outputs"][0])
        result["inputs"].setdefault(key, {"tensor_dtype": np.dtype(detail["dtype"]).name})  # sample's int32 count
    for key, detail in runner.get_output_details().items():
        for op in ops:
            if op["op_name"] == "DEQUANTIZE" and detail["index"] in list(op["outputs"]):
                result["outputs"][key] = params(op["inputs"][0])
        # sample's z comes straight from the float32 random draw, never quantized
        result["outputs"].setdefault(key, {"tensor_dtype": np.dtype(detail["dtype"]).name})
    return result


def _io_details(interpreter, signature):
    runner = interpreter.get_signature_runner(signature)

    def describe(details):
        return {k: {"shape": [None if s < 0 else int(s) for s in d["shape_signature"]],
                    "dtype": np.dtype(d["dtype"]).name} for k, d in sorted(details.items())}

    return {"inputs": describe(runner.get_input_details()), "outputs": describe(runner.get_output_details())}


def run_tflite(model_bytes_or_path, signature, **inputs):
    """Run one signature of a .tflite file (bytes or path) in LiteRT; returns {output key: array}."""
    model_bytes = Path(model_bytes_or_path).read_bytes() if isinstance(model_bytes_or_path, (str, Path)) \
        else model_bytes_or_path
    runner = load_interpreter(model_bytes).get_signature_runner(signature)
    return {k: np.array(v) for k, v in runner(**inputs).items()}


def check_parity(saved_model_dir, tflite_files, images, num_samples=64):
    """Run each TFLite file in LiteRT and compare it with the SavedModel on `images`.

    `tflite_files` are paths named <signature>.<variant>.tflite. decode is fed the SavedModel's
    codes of the images; sample's draws differ from any other run's, so its x_mean is compared
    with the SavedModel's decode of the z it returned. Returns {file name: {output key:
    {"max_abs_diff", "mean_abs_diff", "max_diff"}}} (max_diff: see PARITY_TOLERANCES).
    """
    loaded = tf.saved_model.load(str(saved_model_dir))
    images = np.asarray(images, np.float32)
    feeds = {"decode": {"z": _codes(loaded, images)}, "sample": {"num_samples": np.array(num_samples, np.int32)}}
    reference, result = {}, {}
    for path in map(Path, tflite_files):
        signature = path.name.split(".")[0]
        feed = feeds.get(signature, {"x": images})
        got = run_tflite(path, signature, **feed)
        if signature == "sample":
            if len(got["z"]) != num_samples:
                raise ExportError(f"{path.name}: asked for {num_samples} samples, got z of shape {got['z'].shape}")
            want = {"x_mean": loaded.signatures["decode"](z=tf.constant(got["z"]))["x_mean"].numpy()}
        else:
            if signature not in reference:
                out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feed.items()})
                reference[signature] = {k: v.numpy() for k, v in out.items()}
            want = reference[signature]
        result[path.name] = {k: _diffs(got[k], want[k]) for k in sorted(want)}
    return result


def _diffs(got, want):
    if got.shape != want.shape:
        raise ExportError(f"TFLite output shape {got.shape} != SavedModel's {want.shape}")
    if got.size == 0:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_diff": 0.0}
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))  # NaN where either is NaN: fails any bound
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_diff": float(diff.max() / max(1.0, float(np.abs(want).max())))}


def parity_failures(parity):
    """Violations of PARITY_TOLERANCES in a `check_parity` result: {file name: [messages]}."""
    failures = {}
    for file_name, outputs in sorted(parity.items()):
        metric, bound, keys = PARITY_TOLERANCES[file_name.split(".")[1]]
        for key, diffs in sorted(outputs.items()):
            if (keys is None or key in keys) and not diffs[metric] <= bound:
                failures.setdefault(file_name, []).append(f"{key} {metric} {diffs[metric]:.3g} > {bound:g}")
    return failures


def _convert(saved_model_dir, signature, variant, representative, fp16, fp32_cache):
    if variant not in ("fp32", "fp16"):
        return convert_tflite(saved_model_dir, signature, variant, representative)
    source, float32_layers = fp16[:2] if variant == "fp16" else (saved_model_dir, ())
    if (source, signature) not in fp32_cache:  # fp16 files take their float32 constants from the same source
        fp32_cache[source, signature] = convert_tflite(source, signature, "fp32")
    if variant == "fp32":
        return fp32_cache[source, signature]
    return fp16_lib.keep_float32(convert_tflite(source, signature, "fp16"), fp32_cache[source, signature],
                                 float32_layers)


def _write_tflite(saved_model_dir, out_dir, variants, representative_data, parity_data, strict_parity,
                  signatures=SIGNATURES, fp16=None):
    """Convert, load-check and parity-check every signature x variant into out_dir; the manifest's tflite part.

    fp16 files are converted from fp16 = (SavedModel dir, float32 layer names, rounding description),
    a `kerasae.fp16.plan` (default: saved_model_dir, nearest rounding, biases alone float32).
    A file outside its PARITY_TOLERANCES bound is kept, flagged in the manifest and warned about,
    unless `strict_parity`; a broken fp32 conversion (BROKEN_FP32) always fails the export.
    """
    out_dir.mkdir()
    loaded = tf.saved_model.load(str(saved_model_dir))
    files, skipped, fp32_cache = {}, {}, {}
    for signature in signatures:
        for variant in variants:
            file_name = f"{signature}.{variant}.tflite"
            representative = None
            if variant == "int8":
                representative = representative_inputs(loaded, signature, representative_data)
            try:
                model_bytes = _convert(saved_model_dir, signature, variant, representative,
                                       fp16 or (saved_model_dir, ()), fp32_cache)
            except Exception as err:  # noqa: BLE001  (the converter raises assorted types)
                if variant != "int8":
                    raise ExportError(f"{file_name}: TFLite conversion failed: {err}") from err
                skipped[file_name] = "int8 conversion failed: " + (str(err).strip().splitlines() or ["?"])[-1]
                continue
            interpreter = load_interpreter(model_bytes, delegates=False)
            entry = {"signature": signature, "variant": variant, "bytes": len(model_bytes),
                     "ops": sorted({name for name, _ in tflite_op_codes(model_bytes)}),
                     **_io_details(interpreter, signature)}
            if variant == "fp16":
                entry["float32_weights"] = {
                    "layers": ["biases", *(fp16[1] if fp16 else ())],
                    "float16_rounding": fp16[2] if fp16 else "nearest (no calibration images)"}
            if variant == "int8":
                float_ops = _int8_float_ops(interpreter)
                if float_ops:
                    skipped[file_name] = (f"not fully integer: the converter left {', '.join(float_ops)} in float32 "
                                          "(no int8 kernel); use the fp32, fp16 or dynamic file")
                    continue
                entry["quantization"] = _int8_quantization(interpreter, signature)
            (out_dir / file_name).write_bytes(model_bytes)
            files[file_name] = entry
    parity = check_parity(saved_model_dir, [out_dir / f for f in files], parity_data)
    failures = parity_failures(parity)
    fatal = {f: m for f, m in failures.items() if strict_parity}
    for file_name, outputs in parity.items():
        if files[file_name]["variant"] == "fp32" and not all(d["max_diff"] <= BROKEN_FP32 for d in outputs.values()):
            fatal[file_name] = [f"broken conversion: {k} max_diff {d['max_diff']:.3g}" for k, d in outputs.items()]
    if fatal:
        raise ExportError("TFLite parity check failed: " + "; ".join(f"{f}: {', '.join(m)}" for f, m in fatal.items()))
    for file_name, messages in failures.items():
        warnings.warn(f"{file_name} is outside its parity bound ({', '.join(messages)}); kept and flagged in the "
                      "manifest (tflite.out_of_tolerance)", ParityWarning, stacklevel=3)
    for file_name, entry in files.items():
        entry["parity"] = parity[file_name]
        entry["within_tolerance"] = file_name not in failures
        fp32 = files.get(f"{entry['signature']}.fp32.tflite")
        if fp32:
            entry["size_vs_fp32"] = round(entry["bytes"] / fp32["bytes"], 4)
    return {"files": files, "skipped": skipped, "variants": list(variants), "signatures": list(signatures),
            "out_of_tolerance": {f: ", ".join(m) for f, m in failures.items()},
            "parity_tolerances": {k: {"metric": m, "bound": b, "outputs": list(o) if o else "all"}
                                  for k, (m, b, o) in PARITY_TOLERANCES.items()},
            "int8_io": "float32: int8 files quantize inputs and dequantize outputs inside the graph "
                       "(scale and zero_point under quantization)"}


# ---- files, hashes and versions ---------------------------------------------------------------

def _hash_tree(root, skip=()):
    """{relative posix path: {"sha256", "bytes"}} of every file under root, except `skip` paths."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in skip}


def existing_versions(root):
    """Integer version directories under exported/<name>, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


# ---- export -----------------------------------------------------------------------------------

def export_model(model, export_dir="exported", name=None, version=None, tflite=VARIANTS, representative_data=None,
                 parity_data=None, metrics=None, preset=None, overwrite=False, source=None, strict_parity=False,
                 tflite_signatures=SIGNATURES, fp16_data=None):
    """Export `model` to <export_dir>/<name>/<version>/ (SavedModel) and <export_dir>/<name>/tflite/.

    Args:
        version: integer version; None takes the next after the existing ones (1 for the first).
        tflite: the variants to convert every signature to (a subset of VARIANTS, or a
            comma-separated string); () for the SavedModel alone.
        tflite_signatures: the signatures converted to TFLite (default all; the zoo ships decode only).
        representative_data: float32 images [N, H, W, C] to calibrate int8 on (drawn from the
            training data); required when "int8" is asked for.
        fp16_data: training images the fp16 weights are rounded on (kerasae.fp16.plan; at
            least NUM_FP16_CALIBRATION_IMAGES for GPTQ on MNIST-sized inputs); default
            representative_data; neither: nearest rounding, float32 biases.
        parity_data: images the TFLite files are compared with the SavedModel on (default: the
            first NUM_PARITY_IMAGES of representative_data, else seeded uniform noise).
        metrics, preset, source: recorded in the manifest.
        overwrite: replace an existing version; without it an existing version raises FileExistsError.
        strict_parity: fail (rather than keep, flag and warn about) TFLite files outside
            PARITY_TOLERANCES; a broken fp32 conversion (BROKEN_FP32, NaN) always fails.

    Returns the Path of the version directory. Everything is built in a temporary directory
    next to the target and renamed into place once it is complete and checked; on any error
    nothing is left behind.
    """
    name = check_name(name)
    variants = check_variants(tflite)
    tflite_signatures = check_tflite_signatures(tflite_signatures)
    if not getattr(model, "built", False) or model.family not in ("ae", "dae", "vae"):
        raise ValueError(f"export_model needs a built kerasae model, got {type(model).__name__}")
    shape = tuple(model.image_shape)
    if representative_data is not None:
        representative_data = _check_images(representative_data, shape, "representative_data")
    if parity_data is not None:
        parity_data = _check_images(parity_data, shape, "parity_data")
    fp16_data = representative_data if fp16_data is None else _check_images(fp16_data, shape, "fp16_data")
    if "int8" in variants and representative_data is None:
        raise ValueError("int8 TFLite needs representative_data (training images [N, H, W, C] in [0, 1]) to "
                         "calibrate on; pass it (CLI: --representative-data FILE.npz) or drop int8 from tflite")
    if parity_data is None:
        parity_data = (representative_data[:NUM_PARITY_IMAGES] if representative_data is not None else
                       np.random.default_rng(0).random((NUM_PARITY_IMAGES, *shape), dtype=np.float32))
        parity_source = "representative data" if representative_data is not None else "uniform noise"
    else:
        parity_source = "parity_data"

    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                or version < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    export_root = Path(export_dir)
    root = export_root / name
    created = [p for p in (export_root, root) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"export_dir: cannot create {root} ({err.strerror or err})") from err
    if version is None:
        version = (existing_versions(root) or [0])[-1] + 1
    target = root / str(int(version))
    if target.exists() and not overwrite:
        _remove_if_empty(created)
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")

    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=root))  # same filesystem: renames are atomic
    except OSError as err:
        _remove_if_empty(created)
        raise ValueError(f"export_dir: cannot write to {root} ({err.strerror or err})") from err
    try:
        saved_dir, tflite_dir = tmp / "saved_model", tmp / "tflite"
        write_saved_model(model, saved_dir)
        loaded = tf.saved_model.load(str(saved_dir))
        loaded_signatures = saved_model_signatures(loaded)
        problems = _contract_problems(loaded_signatures, expected_signatures(model), "SavedModel")
        keras_parity = _keras_parity(model, loaded, parity_data)
        problems += [f"SavedModel {sig} {key} differs from the Keras model's method by {diff:.3g}"
                     for sig, outputs in keras_parity.items() for key, diff in outputs.items()
                     if not diff <= KERAS_TOLERANCE]
        if problems:
            raise ExportError("; ".join(problems))
        fp16 = None
        if "fp16" in variants and fp16_data is not None:
            calibration = fp16_data[:NUM_FP16_CALIBRATION_IMAGES]
            rounded, float32_layers = fp16_lib.plan(model, calibration, bound=PARITY_TOLERANCES["fp16"][1])
            write_saved_model(rounded, tmp / "fp16_source")
            fp16 = (tmp / "fp16_source", float32_layers,
                    f"GPTQ on {len(calibration)} calibration images for Dense kernels with at most "
                    f"{len(calibration) // 2} inputs; nearest for the others")
        tflite_info = (_write_tflite(saved_dir, tflite_dir, variants, representative_data, parity_data,
                                     strict_parity, tflite_signatures, fp16) if variants else None)
        if tflite_info:
            tflite_info["parity_data"] = f"{len(parity_data)} images ({parity_source})"
        (saved_dir / "assets.extra").mkdir(exist_ok=True)
        manifest = {
            "format": FORMAT, "export_id": uuid.uuid4().hex, "name": name, "version": int(version),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": None if source is None else str(source), "preset": preset,
            "model": {"class": type(model).__name__, "registered_name": keras.saving.get_registered_name(type(model)),
                      "family": model.family, "config": model.get_config()},
            "versions": library_versions(), "metrics": metrics,
            "input_spec": {"x": {**_spec([None, *shape]), "layout": "NHWC", "range": [0.0, 1.0],
                                 "binary_pixels": bool(getattr(model, "binary_data", False))}},
            "latent_dim": model.latent_dim, "signatures": loaded_signatures, "score": score_definition(model),
            "savedmodel_vs_keras_max_diff": keras_parity,
            "tflite": tflite_info,
            "files": {"saved_model": _hash_tree(saved_dir),
                      "tflite": _hash_tree(tflite_dir) if variants else {}},
        }
        text = json_text(manifest)
        if variants:
            (tflite_dir / MANIFEST).write_text(text)
        (saved_dir / "assets.extra" / MANIFEST).write_text(text)  # last: a version with a manifest is complete

        if target.exists() and not overwrite:  # another export took this version meanwhile
            raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
        _commit(tmp, saved_dir, target, tflite_dir if variants else None, root / "tflite")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(created)
        cause = _write_fault(err)
        if cause:
            raise ExportError(f"{target}: writing the export failed: {cause}; nothing was committed, earlier "
                              f"versions and {root / 'tflite'} are unchanged") from err
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _commit(tmp, saved_dir, target, tflite_dir, tflite_target):
    """Rename the finished export into place: the version directory first (one rename: readers see all
    of it or nothing), then the tflite folder. Replaced directories go to `tmp` (deleted afterwards);
    if any rename fails, the ones done are undone, so the old state stays whole."""
    done = []

    def move(src, dst):
        os.rename(src, dst)
        done.append((src, dst))

    try:
        if target.exists():
            move(target, tmp / "replaced-version")
        move(saved_dir, target)
        if tflite_dir is not None:
            if tflite_target.exists():
                move(tflite_target, tmp / "replaced-tflite")
            move(tflite_dir, tflite_target)
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise


_WRITE_FAULTS = ("No space left on device", "Permission denied", "Read-only file system", "Input/output error",
                 "Disk quota exceeded")


def _write_fault(err):
    """The cause, in words, when `err` is a file system error while writing (disk full, permission denied,
    I/O error) raised by Python or by TensorFlow's writers; None for any other error."""
    if isinstance(err, OSError) and not isinstance(err, (FileExistsError, FileNotFoundError)):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}"
    if isinstance(err, tf.errors.OpError):
        text = " ".join(str(err).split())
        for cause in _WRITE_FAULTS:
            if cause.lower() in text.lower():
                return f"{cause} ({type(err).__name__}: {text[:300]})"
    return None


def _remove_if_empty(created):
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def _check_images(x, shape, what):
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or len(x) == 0:
        raise ValueError(f"{what} must be images [N, {', '.join(map(str, shape))}], got shape {list(x.shape)}")
    x = x.astype(np.float32)
    if not (x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(f"{what} must be float images in [0, 1], found [{x.min()}, {x.max()}]")
    return x


def load_images_npz(path):
    """Images from an .npz: the array "x", "x_train" or "images", or its only array (uint8 is / 255)."""
    with np.load(path, allow_pickle=False) as npz:
        keys = [k for k in ("x", "x_train", "images") if k in npz.files] or (npz.files if len(npz.files) == 1 else [])
        if not keys:
            raise ValueError(f"{path}: no array named x, x_train or images (has {npz.files})")
        x = npz[keys[0]]
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def export_run(run_dir_or_model_path, name, export_dir="exported", version=None, tflite=VARIANTS,
               representative_data=None, overwrite=False, num_representative=NUM_REPRESENTATIVE_IMAGES,
               strict_parity=False, metrics=None, tflite_signatures=SIGNATURES):
    """Export a training run directory (model.keras, config.json, metrics.json) or a bare .keras file.

    int8 calibrates on the first `num_representative` training images of the run's dataset
    (binarized like training for Bernoulli models), and every TFLite file is compared with the
    SavedModel on the first 256 test images (as the run evaluates them). A bare .keras file
    outside a run uses the embedded MNIST when its image shape matches; otherwise pass
    `representative_data` (images or an .npz path) or leave int8 out. Call it after training
    as `export_run(result.run_dir, name)`. `metrics` replaces the run's metrics.json in the
    manifest (which describes model.keras, so it is only used for model.keras); the zoo passes
    what reproduce measured on best.keras. Returns the version directory.
    """
    from kerasae import data as data_lib

    path = Path(run_dir_or_model_path)
    if path.is_dir():
        run_dir, model_path = path, path / "model.keras"
        if not model_path.is_file():
            raise FileNotFoundError(f"{path} is not a finished run directory: no model.keras in it")
    elif path.is_file() and path.suffix == ".keras":
        run_dir, model_path = (path.parent if (path.parent / "config.json").is_file() else None), path
    else:
        raise FileNotFoundError(f"{path}: expected a run directory or a .keras file")
    config = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    if metrics is None and run_dir and model_path.name == "model.keras" and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())  # measured on model.keras, not best.keras
    model = load_keras_model(model_path)  # CRC-checked, safe_mode=True; ModelFileError (a ValueError) if bad
    shape = tuple(model.image_shape)
    binary = bool(getattr(model, "binary_data", False))
    train_cfg = config.get("train") or {}

    variants = check_variants(tflite)
    if isinstance(representative_data, (str, Path)):
        representative_data = load_images_npz(representative_data)
    data = None
    if variants and train_cfg.get("dataset"):
        image_size = train_cfg.get("image_size")
        data = data_lib.load_dataset(train_cfg["dataset"], data_dir=train_cfg.get("data_dir"),
                                     image_size=tuple(image_size) if image_size else None,
                                     color_mode=train_cfg.get("color_mode"))
        if tuple(data.image_shape) != shape:
            raise ValueError(f"the run's dataset has images {data.image_shape}, the model takes {shape}")
    elif variants and shape == (28, 28, 1):
        data = data_lib.load_mnist()
    parity_data = fp16_data = None
    if data is not None:
        parity_data = data.x_test[:NUM_PARITY_IMAGES]
        if binary:  # the fixed binarization the run was tested on (metrics.json; training's default is seed 0)
            parity_data = data_lib.binarize(parity_data, seed=data_lib.TEST_BINARIZATION_SEED)
        train = data.x_train[:max(num_representative, NUM_FP16_CALIBRATION_IMAGES)]
        if binary:  # Bernoulli models train on binarized pixels
            train = data_lib.binarize(train, seed=1)
        if representative_data is None:
            representative_data = train[:num_representative]
        fp16_data = train
    if "int8" in variants and representative_data is None:
        raise ValueError(f"{path}: no training data to calibrate int8 on (not a run directory, and images "
                         f"{shape} are not MNIST's); pass --representative-data FILE.npz or drop int8 from --tflite")
    return export_model(model, export_dir, name, version=version, tflite=variants,
                        representative_data=representative_data, parity_data=parity_data, metrics=metrics,
                        preset=config.get("preset"), overwrite=overwrite, source=path, strict_parity=strict_parity,
                        tflite_signatures=tflite_signatures, fp16_data=fp16_data)


# ---- verify -----------------------------------------------------------------------------------

def verify(path, deep=True, strict=False):
    """Check an export against its manifest; returns a list of problems ([] when all is well).

    `path` is exported/<name> (every version and the tflite folder), a version directory, or
    a tflite folder. Recomputes the sha256 of every file listed, flags missing and unlisted
    files, and with `deep` also loads the SavedModel (its signatures must match the manifest)
    and every .tflite file in LiteRT (builtin ops only). `strict` raises VerificationError
    instead of returning problems.
    """
    path = Path(path)
    problems = []
    if (path / "saved_model.pb").is_file():
        problems += _verify_version(path, deep)
        manifest = _read_manifest(path / "assets.extra" / MANIFEST, [])
        tflite_manifest = _read_manifest(path.parent / "tflite" / MANIFEST, [])
        if manifest and tflite_manifest and tflite_manifest.get("export_id") == manifest.get("export_id"):
            problems += _verify_tflite(path.parent / "tflite", deep)  # the tflite folder came from this export
    elif (path / MANIFEST).is_file() and path.name == "tflite":
        problems += _verify_tflite(path, deep)
    elif path.is_dir() and (existing_versions(path) or (path / "tflite").is_dir()):
        for v in existing_versions(path):
            problems += _verify_version(path / str(v), deep)
        if (path / "tflite").is_dir():
            problems += _verify_tflite(path / "tflite", deep)
    else:
        problems.append(f"{path}: not a kerasae export (no version directories, saved_model.pb or tflite/{MANIFEST})")
    if strict and problems:
        raise VerificationError("\n".join(problems))
    return problems


def _read_manifest(path, problems):
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        problems.append(f"{path}: cannot read the manifest ({err})")
        return None
    if manifest.get("format") != FORMAT:
        problems.append(f"{path}: not a {FORMAT} manifest")
        return None
    return manifest


def _check_files(root, listed, skip, problems):
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - set(skip)
    for rel, entry in sorted(listed.items()):
        file = root / rel
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"{file}: sha256 mismatch (changed since export)")
    for rel in sorted(actual - set(listed)):
        if not rel.startswith("assets.extra/"):  # where TF Serving's warm-up file may be added
            problems.append(f"{root / rel}: not in the manifest")


def _verify_version(version_dir, deep):
    problems = []
    manifest = _read_manifest(version_dir / "assets.extra" / MANIFEST, problems)
    if manifest is None:
        return problems
    if str(manifest.get("version")) != version_dir.name:
        problems.append(f"{version_dir}: the manifest is for version {manifest.get('version')}")
    _check_files(version_dir, manifest["files"]["saved_model"], {f"assets.extra/{MANIFEST}"}, problems)
    if deep and not problems:
        try:
            signatures = saved_model_signatures(tf.saved_model.load(str(version_dir)))
        except Exception as err:  # noqa: BLE001
            return problems + [f"{version_dir}: the SavedModel does not load ({type(err).__name__}: {err})"]
        problems += _contract_problems(signatures, manifest["signatures"], str(version_dir))
    return problems


def _verify_tflite(tflite_dir, deep):
    problems = []
    manifest = _read_manifest(tflite_dir / MANIFEST, problems)
    if manifest is None:
        return problems
    _check_files(tflite_dir, manifest["files"]["tflite"], {MANIFEST}, problems)
    if deep and not problems:
        for rel in manifest["files"]["tflite"]:
            try:
                load_interpreter((tflite_dir / rel).read_bytes(), delegates=False)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{tflite_dir / rel}: does not load in LiteRT ({err})")
    return problems

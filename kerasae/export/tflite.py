"""TFLite files: converting one SavedModel signature, reading a file's ops, running it in LiteRT.

Every file is converted with TFLite builtin ops only (`convert_tflite`), and checked for
non-builtin ops in the flatbuffer and in what LiteRT resolves (`load_interpreter`). int8 files
are calibrated on `representative_inputs` and must compute in integers throughout
(`_int8_float_ops`); their input/output quantization is read back for the manifest.
Conversions inside `reuse_saved_models` load each SavedModel once instead of twice per file.
"""

import contextlib
import gc
import importlib
import os
import threading
import warnings
from pathlib import Path

from kerasae import _backend  # noqa: F401
import numpy as np
import tensorflow as tf

from kerasae._stderr import quiet_fd2
from kerasae.export.errors import ExportError
from kerasae.export.saved_model import _codes, example_labels
from kerasae.options import VARIANTS

#: Ops an int8 file may run in float: the boundary (de)quantization and `sample`'s random draws, the
#: N(0, I) noise and a VampPrior's component (TFLite has no int8 random kernels; the noise is quantized at
#: once, the component is an integer index).
_INT8_FLOAT_OK = {"QUANTIZE", "DEQUANTIZE", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"}


def _litert():
    from ai_edge_litert import interpreter

    return interpreter


def _batches(arrays, key, labels=None, batch_size=16):
    for i in range(0, len(arrays), batch_size):
        batch = np.asarray(arrays[i:i + batch_size])
        yield {key: batch if batch.dtype.kind == "i" else batch.astype(np.float32),
               **({} if labels is None else {"label": labels[i:i + batch_size]})}


def representative_inputs(loaded, signature, images, seed=0, classes=None):
    """Calibration inputs for an int8 `signature`: a list of input dicts.

    Images for x-signatures. For decode, the codes of those images (z or z_mean) plus as many
    draws from the prior, since decode serves both reconstructions and generation (a VQ-VAE's:
    the images' code indices with each position's shuffled across images). For sample,
    a few num_samples values (the decoder is calibrated on the graph's own N(0, I) draws). A
    conditional model's (`classes`) inputs come with labels cycling through its classes.
    """
    images = np.asarray(images, np.float32)
    labels = example_labels(2 * len(images), classes)
    if signature == "sample":
        return [{"num_samples": np.array(32, np.int32), **({} if labels is None else {"label": labels[i]})}
                for i in range(max(1, len(images) // 32))]
    if signature == "decode":
        codes = _codes(loaded, images, None if labels is None else labels[:len(images)])
        rng = np.random.default_rng(seed)
        if codes.dtype.kind == "i":  # a VQ-VAE's indices: each position's codes shuffled across the images
            prior = rng.permuted(codes, axis=0)
        else:
            prior = rng.standard_normal(codes.shape).astype(np.float32)
        return list(_batches(np.concatenate([codes, prior]), "z", labels))
    return list(_batches(images, "x", labels))


_loads = threading.local()  # this thread's {realpath of a SavedModel directory: loaded SavedModel}, or none
_tf_load = None  # tf.lite's own SavedModel loader, once `_converter_load` stands in for it


def _converter_load(export_dir, tags=None, options=None):
    """tf.lite's SavedModel loader, answered from `reuse_saved_models`' cache when this thread has one."""
    cache = getattr(_loads, "cache", None)
    if cache is None or options is not None:
        return _tf_load(export_dir, tags, options)
    key = os.path.realpath(export_dir)
    if key not in cache:
        cache[key] = _tf_load(export_dir, tags)
    return cache[key]


@contextlib.contextmanager
def reuse_saved_models(preloaded=None):
    """Let the TFLite conversions in this block (this thread) load each SavedModel directory once.

    TFLiteConverter.from_saved_model loads the whole SavedModel (every function of every signature,
    0.3-1 s) only to check the signature key, and convert() loads it again only for debug info: the
    MLIR importer reads the directory itself, and neither load's object is changed. So one object per
    directory serves them all; `preloaded` ({directory: the loaded SavedModel}) gives ones already loaded.
    Outside such a block, and where tf.lite has no such loader to stand in for, conversions load as before.
    """
    global _tf_load
    lite = importlib.import_module("tensorflow.lite.python.lite")
    if getattr(lite, "_load", None) is not _converter_load and callable(getattr(lite, "_load", None)):
        _tf_load, lite._load = lite._load, _converter_load
    outer = getattr(_loads, "cache", None)
    cache = {} if outer is None else outer
    cache.update({os.path.realpath(d): m for d, m in (preloaded or {}).items()})
    _loads.cache = cache
    try:
        yield
    finally:
        _loads.cache = outer


@contextlib.contextmanager
def frozen_heap():
    """Freeze the objects that exist for this block (gc.freeze), unless the caller has frozen some already.

    Every TFLiteConverter.convert() ends in gc.collect(): a scan of the whole heap, which in a process
    holding a few models costs 0.1-0.4 s a conversion. Frozen, the objects made before the block are
    left out of those scans; what the block makes is collected as usual, the rest after it.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def convert_tflite(saved_model_dir, signature, variant, representative=None):
    """Convert one signature of a SavedModel to TFLite bytes, builtin ops only.

    fp32: as is. fp16: float16 weights (dequantized at load, float compute; `export_model`
    then puts the biases and code/output layers back to float32, see kerasae.fp16). dynamic:
    dynamic-range quantization (int8 weights, activations quantized on the fly). int8: full
    integer quantization calibrated on `representative` (input dicts), int8 builtins only;
    inputs and outputs stay float32 (quantized/dequantized inside the graph), so every
    variant keeps the same float contract.
    """
    with reuse_saved_models():  # one load of the SavedModel, not two (see there)
        return _convert(saved_model_dir, signature, variant, representative)


def _convert(saved_model_dir, signature, variant, representative):
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
    with warnings.catch_warnings(), quiet_fd2():  # int8 calibration runs the deprecated tf.lite.Interpreter
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
    with quiet_fd2():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" (replayed if this fails)
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

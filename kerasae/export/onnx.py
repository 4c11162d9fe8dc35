"""ONNX files beside the TFLite ones: each SavedModel signature converted with tf2onnx, checked in onnxruntime.

An optional extra (`pip install "kerasae[onnx]"`), never a runtime dependency: tf2onnx and onnxruntime are
imported only when a conversion or a run asks for them, so kerasae imports and exports without them.
`_write_onnx` builds the onnx/ folder of an export, <signature>.onnx per signature, and returns the
manifest's "onnx" part; every file is loaded in onnxruntime and compared with the SavedModel on the
parity images the TFLite files use (`check_parity`). A signature tf2onnx cannot convert, or whose
graph onnxruntime cannot load (an op without an ONNX kernel), is recorded as skipped with the reason.
"""

import contextlib
import importlib.util
import logging
import warnings
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path

import numpy as np

from kerasae.export.parity import BROKEN_FP32, check_parity, settle_parity
from kerasae.options import SIGNATURES

#: The ONNX operator set the files are written for (onnxruntime >= 1.14 runs it).
OPSET = 17
#: The modules of the extra: (import name, distribution name).
_MODULES = (("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime"))
INSTALL_HINT = 'pip install "kerasae[onnx]"'
#: max_diff bound of an ONNX file against its SavedModel (max_diff: see PARITY_TOLERANCES), on every output.
#: Both compute in float32 and differ by summation order only, which each runtime's kernels choose by CPU: at most
#: 6.5e-6 measured on the zoo (vae-resnet-28's reconstruction; benchmarks/results/onnx_parity.json, AVX2), so 15x
#: room for other CPUs; a wrong op misses it by orders of magnitude (BROKEN_FP32 = 1e-3 fails the export).
ONNX_TOLERANCE = 1e-4


def missing_modules():
    """The extra's modules that cannot be imported here ([] when ONNX export is available); imports nothing."""
    def found(name):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or a module hidden in sys.modules
            return False

    return [name for name, _ in _MODULES if not found(name)]


def unavailable():
    """Why ONNX export cannot run here, in a line ("needs tf2onnx, not installed: ..."), or None."""
    missing = missing_modules()
    return f"needs {' and '.join(missing)}, not installed: {INSTALL_HINT}" if missing else None


def require_onnx():
    """Raise ImportError, naming the install command, when tf2onnx or onnxruntime is missing."""
    missing = missing_modules()
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)} (not installed): {INSTALL_HINT}")


def converter_versions():
    versions = {}
    for _, dist in _MODULES:
        try:
            versions[dist] = dist_version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return versions


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every step of a conversion, and a traceback for an op it cannot convert (the export records
    the reason under onnx.skipped): keep it quiet."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


_LOG1P = []


def _register_log1p():
    """Teach tf2onnx TensorFlow's Log1p, which it passes through unconverted (1.17), so `score` converts.

    log1p(x) = x * log(u) / (u - 1) with u = 1 + x rounded (Goldberg's trick: accurate to a few ulps where
    log(1 + x) loses all digits of a small x); x where u == 1, u where u is +inf.
    """
    if _LOG1P:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Log1p")
    class Log1p:  # noqa: F841  (registered by the decorator)
        @classmethod
        def version_7(cls, ctx, node, **kwargs):
            x, dtype = node.input[0], ctx.get_dtype(node.input[0])
            numpy_dtype = utils.map_onnx_to_numpy_type(dtype)

            def const(value):
                return ctx.make_const(utils.make_name(f"{node.name}_c"), np.array(value, numpy_dtype)).output[0]

            def op(op_type, *inputs):
                return ctx.make_node(op_type, list(inputs), op_name_scope=node.name).output[0]

            u = op("Add", x, const(1.0))
            d = op("Sub", u, const(1.0))
            ratio = op("Mul", x, op("Div", op("Log", u), d))
            finite = op("Where", op("Equal", d, const(0.0)), x, ratio)
            ctx.replace_inputs(node, [op("Equal", u, const(np.inf)), u, finite])
            node.type = "Where"

    _LOG1P.append(Log1p)


def convert_onnx(saved_model_dir, signature, opset=OPSET):
    """Convert one signature of a SavedModel to ONNX bytes; inputs and outputs keep the signature's key names.

    Done as tf2onnx's command line does it (`python -m tf2onnx.convert --saved-model DIR --signature_def SIG`):
    the signature's function frozen from the SavedModel, then converted op by op.
    """
    require_onnx()
    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common

    _register_log1p()
    with _quiet_tf2onnx():
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved_model_dir), None, None, tag=["serve"], signatures=[signature],
            return_initialized_tables=True, return_tensors_to_rename=True)
        with tf.device("/cpu:0"):
            model_proto, _ = _convert_common(graph_def, name=signature, continue_on_error=False, opset=opset,
                                             input_names=inputs, output_names=outputs, tensors_to_rename=renames,
                                             initialized_tables=tables)
    _unseed(model_proto)
    return model_proto.SerializeToString()


#: ONNX ops that draw random numbers (`sample`'s N(0, I) noise, a VampPrior's component).
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}


def _unseed(model_proto):
    """Drop the fixed seed tf2onnx gives the random ops of an unseeded TensorFlow graph (tf.random.normal with
    seed None): with it, every new onnxruntime session draws the same samples first; without it, onnxruntime
    seeds each op afresh, as the SavedModel and the TFLite files draw."""
    for node in model_proto.graph.node:
        if node.op_type in _RANDOM_OPS:
            kept = [a for a in node.attribute if a.name != "seed"]
            del node.attribute[:]
            node.attribute.extend(kept)


def onnx_session(model_bytes_or_path):
    """An onnxruntime InferenceSession on the CPU for a .onnx file (bytes or path)."""
    require_onnx()
    import onnxruntime

    model = model_bytes_or_path
    if isinstance(model, Path):
        model = str(model)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session warnings about unused initializers
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnx(model_bytes_or_path, **inputs):
    """Run a .onnx file (bytes or path) in onnxruntime; returns {output key: array}."""
    session = onnx_session(model_bytes_or_path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in inputs.items()})))


def _io_details(session):
    def describe(args):
        return {a.name: {"shape": [d if isinstance(d, int) else None for d in a.shape],
                         "dtype": a.type.removeprefix("tensor(").removesuffix(")").replace("float", "float32")}
                for a in sorted(args, key=lambda a: a.name)}

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def _reason(err):
    return " ".join((str(err).strip().splitlines() or [type(err).__name__])[-1].split())[:300]


def _write_onnx(saved_model_dir, out_dir, parity_data, strict_parity, signatures=SIGNATURES, classes=None):
    """Convert, load-check and parity-check every signature into out_dir/<signature>.onnx; the manifest's onnx part.

    A file beyond ONNX_TOLERANCE is kept, flagged and warned about unless `strict_parity`; one beyond
    BROKEN_FP32 or with a non-finite output always fails the export (ExportError).
    """
    out_dir.mkdir()
    files, skipped = {}, {}
    for signature in signatures:
        file_name = f"{signature}.onnx"
        try:
            model_bytes = convert_onnx(saved_model_dir, signature)
        except Exception as err:  # noqa: BLE001  (tf2onnx raises assorted types)
            skipped[file_name] = f"tf2onnx cannot convert it: {_reason(err)}"
            continue
        try:
            session = onnx_session(model_bytes)
        except Exception as err:  # noqa: BLE001  (an op tf2onnx passed through without an ONNX kernel)
            skipped[file_name] = f"onnxruntime cannot load it: {_reason(err)}"
            continue
        (out_dir / file_name).write_bytes(model_bytes)
        files[file_name] = {"signature": signature, "bytes": len(model_bytes), "opset": OPSET,
                            "ops": sorted({node.op_type for node in _graph_nodes(model_bytes)}), **_io_details(session)}
    parity = check_parity(saved_model_dir, [out_dir / f for f in files], parity_data, classes=classes,
                          run=lambda path, signature, **feed: run_onnx(path, **feed))
    failures, fatal = {}, {}
    for file_name, outputs in sorted(parity.items()):
        misses = [f"{k} max_diff {d['max_diff']:.3g} > {ONNX_TOLERANCE:g}" for k, d in sorted(outputs.items())
                  if not d["max_diff"] <= ONNX_TOLERANCE]
        if misses:
            failures[file_name] = misses
            if strict_parity or not all(d["max_diff"] <= BROKEN_FP32 for d in outputs.values()):
                fatal[file_name] = misses
    settle_parity("ONNX", "onnx", files, parity, failures, fatal)
    return {"files": files, "skipped": skipped, "signatures": list(signatures), "opset": OPSET,
            "converter": converter_versions(), "runtime": "onnxruntime, CPUExecutionProvider",
            "out_of_tolerance": {f: ", ".join(m) for f, m in failures.items()},
            "parity_tolerance": {"metric": "max_diff", "bound": ONNX_TOLERANCE, "outputs": "all"}}


def _graph_nodes(model_bytes):
    import onnx

    return onnx.load_model_from_string(model_bytes).graph.node

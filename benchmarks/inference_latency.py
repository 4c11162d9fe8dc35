"""Inference latency: the exported SavedModel vs TFLite fp32/fp16/dynamic/int8 vs the raw Keras model.

The model (a `.keras` file, or a freshly built `vae-mlp`: untrained weights time the same as trained
ones) is exported with `kerasae.export.export_model` into a temporary directory: a SavedModel with
every signature and the TFLite files of encode, decode and reconstruct in each variant (int8
calibrated on 500 MNIST training images). Then each of encode, decode and reconstruct is timed at
batch 1 and batch 256, as a user calls it, numpy in and numpy out:

- SavedModel: `tf.saved_model.load(dir).signatures[name](x=tf.constant(x))`, outputs to numpy;
- TFLite: one `kerasae.export.load_interpreter` (LiteRT, default delegates) per file and one
  signature runner, created once, called repeatedly; the runner resizes its input to the
  batch itself (a no-op when the shape is unchanged). `invoke` also times the interpreter's
  bare `invoke()` on inputs already set: the compute alone, without the Python call overhead;
- Keras: `model(x)` (call = reconstruct), `model.reconstruct/encode/decode(x)` and
  `model.predict_on_batch(x)` (a compiled tf.function).

Every figure is the median (with min/max and 10th/90th percentiles) of many warm calls, each timed
alone. The targets are reported as pass/fail: TFLite decode at batch 1 <= 0.3 ms, and the
SavedModel's batch-256 reconstruct within 1.2x of the raw Keras model's `model(x)`.

    python benchmarks/inference_latency.py                # the full benchmark (quiet machine only)
    python benchmarks/inference_latency.py --quick        # a smoke run, numbers meaningless
"""

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SIGNATURES = ("encode", "decode", "reconstruct")
VARIANTS = ("fp32", "fp16", "dynamic", "int8")
REPRESENTATIVE_IMAGES = 500
DECODE_BATCH1_TARGET_MS = 0.3
SAVEDMODEL_VS_KERAS_TARGET = 1.2

QUICK = dict(calls=10, warmup=2)
FULL = dict(calls=300, warmup=20)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="inference_latency.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults: 300 timed calls after 20 warm-up calls per measurement. --quick: 10 after 2 (a smoke "
               "run; its numbers mean nothing). Run on a quiet machine only.")
    parser.add_argument("--model", type=Path, help="a kerasae .keras file (default: a freshly built vae-mlp)")
    parser.add_argument("--quick", action="store_true", help="few calls, for CI/smoke tests (explicit flags still win)")
    parser.add_argument("--calls", type=common.positive_int, help="timed calls per measurement (full: 300)")
    parser.add_argument("--warmup", type=common.positive_int, help="untimed calls first (full: 20)")
    parser.add_argument("--batches", type=common.int_list, default=[1, 256],
                        help="batch sizes (default 1,256; the targets use 1 and 256)")
    parser.add_argument("--signatures", type=common.choice_list(SIGNATURES), default=list(SIGNATURES),
                        help=f"comma-separated subset of {','.join(SIGNATURES)} (default: all)")
    parser.add_argument("--variants", type=common.choice_list(VARIANTS), default=list(VARIANTS),
                        help=f"TFLite variants, a subset of {','.join(VARIANTS)} (default: all)")
    args = common.parse_args(parser, argv, lambda a: QUICK if a.quick else FULL, "inference_latency.json")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    if args.model is not None and args.model.suffix != ".keras":
        parser.error(f"--model {args.model}: expected a .keras file")
    return args


def load_model(args):
    """(model, description): the .keras file, loaded the way kerasae loads them, or a fresh vae-mlp."""
    import keras

    import kerasae
    from kerasae import files

    if args.model is None:
        return kerasae.build("vae-mlp", seed=0), ("a freshly built vae-mlp preset with untrained (random) weights: "
                                                  "latency does not depend on the weights' values")
    loader = getattr(files, "load_keras_model", None)  # integrity-checked loading, where kerasae has it
    model = loader(args.model) if loader else keras.saving.load_model(args.model, compile=False, safe_mode=True)
    return model, f"loaded from {args.model}"


def input_images(model, count):
    """MNIST images when the model takes 28x28x1, else seeded uniform noise in [0, 1] (same timing)."""
    import numpy as np

    from kerasae.data import load_mnist

    if tuple(model.image_shape) == (28, 28, 1):
        mnist = load_mnist()
        return mnist.x_train[:REPRESENTATIVE_IMAGES], mnist.x_test[:count], "MNIST (train: calibration, test: inputs)"
    rng = np.random.default_rng(0)
    shape = tuple(model.image_shape)
    return (rng.random((REPRESENTATIVE_IMAGES, *shape), dtype=np.float32),
            rng.random((count, *shape), dtype=np.float32), "uniform noise (the model does not take MNIST's shape)")


def export(model, representative, parity, variants, signatures, root):
    """Export into `root`; returns (saved model dir, {variant: {signature: tflite path}}, export facts)."""
    from kerasae import export as export_lib

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", export_lib.ParityWarning)
        version_dir = export_lib.export_model(model, root, "bench", tflite=variants, representative_data=representative,
                                              parity_data=parity, tflite_signatures=signatures)
    seconds = time.perf_counter() - start
    tflite_dir = Path(root) / "bench" / "tflite"
    manifest = json.loads((tflite_dir / export_lib.MANIFEST).read_text()) if variants else {}
    info = manifest.get("tflite") or {}
    files = {}
    for name in info.get("files", {}):
        signature, variant = name.split(".")[:2]
        files.setdefault(variant, {})[signature] = tflite_dir / name
    facts = {"seconds": round(seconds, 2), "variants": list(variants), "tflite_signatures": list(signatures),
             "file_bytes": {name: entry["bytes"] for name, entry in info.get("files", {}).items()},
             "skipped": info.get("skipped", {}), "out_of_tolerance": info.get("out_of_tolerance", {}),
             "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, export_lib.ParityWarning)})}
    return version_dir, files, facts


class Timer:
    def __init__(self, calls, warmup):
        self.calls, self.warmup = calls, warmup

    def __call__(self, fn):
        return common.latency_summary(common.time_calls(fn, self.calls, self.warmup))


def feeds(loaded, images, batches):
    """{signature input key: {batch: numpy array}}: test images for x, their posterior means (or codes) for z."""
    import numpy as np
    import tensorflow as tf

    x = {b: np.ascontiguousarray(images[np.arange(b) % len(images)]) for b in batches}
    z = {}
    for b, xb in x.items():
        out = loaded.signatures["encode"](x=tf.constant(xb))
        z[b] = np.ascontiguousarray((out["z_mean"] if "z_mean" in out else out["z"]).numpy())
    return {"x": x, "z": z}


def input_key(signature):
    return "z" if signature == "decode" else "x"


def time_savedmodel(loaded, signature, feed, timer):
    import tensorflow as tf

    fn = loaded.signatures[signature]
    key = input_key(signature)
    return timer(lambda: {k: v.numpy() for k, v in fn(**{key: tf.constant(feed)}).items()})


def time_tflite(path, signature, feeds_by_batch, timer):
    """{batch: {"call": ..., "invoke": ...}} for one TFLite file, one interpreter and one runner for all batches."""
    from kerasae import export as export_lib

    model_bytes = Path(path).read_bytes()
    runner = export_lib.load_interpreter(model_bytes).get_signature_runner(signature)
    # invoke() refuses to run while a signature runner holds the interpreter: time it on a second one
    bare = export_lib.load_interpreter(model_bytes)
    (detail,) = bare.get_input_details()  # one input per signature (x or z)
    key = input_key(signature)
    result = {}
    for batch, feed in feeds_by_batch.items():
        call = timer(lambda: runner(**{key: feed}))  # resizes to this batch on its first (warm-up) call
        bare.resize_tensor_input(detail["index"], list(feed.shape))
        bare.allocate_tensors()
        bare.set_tensor(detail["index"], feed)
        result[batch] = {"call": call, "invoke": timer(bare.invoke)}
    return result


def time_keras(model, signature, feed, timer):
    """The Keras model's own entry points for a signature (numpy in, numpy out)."""
    import numpy as np

    def numpy_of(out):
        return [np.asarray(t) for t in out] if isinstance(out, (tuple, list)) else np.asarray(out)

    method = {"encode": model.encode, "decode": model.decode, "reconstruct": model.reconstruct}[signature]
    result = {"method": timer(lambda: numpy_of(method(feed)))}
    if signature == "reconstruct":
        result["call"] = timer(lambda: numpy_of(model(feed)))
        result["predict_on_batch"] = timer(lambda: numpy_of(model.predict_on_batch(feed)))
    return result


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    import tensorflow as tf

    result = common.header("inference_latency", args, args.quick)
    model, description = load_model(args)
    representative, images, data_source = input_images(model, max(args.batches))
    result["model"] = {"description": description, "class": type(model).__name__, "family": model.family,
                       "image_shape": list(model.image_shape), "latent_dim": model.latent_dim,
                       "config": model.get_config(), "trained": args.model is not None}
    result["threads"] = {"tensorflow": common.tensorflow_threads(tf),
                         "tflite": "LiteRT defaults (num_threads unset, default XNNPACK delegate), as "
                                   "kerasae.export.load_interpreter gives users"}
    timer = Timer(args.calls, args.warmup)
    result["timing"] = {"calls": args.calls, "warmup": args.warmup, "data": data_source,
                        "what": "wall time of one call, numpy inputs in, numpy outputs out; median of the timed "
                                "calls, each timed alone after the warm-up calls"}

    with tempfile.TemporaryDirectory(prefix="kerasae-latency-") as root:
        common.log(f"exporting (SavedModel + TFLite {','.join(args.variants)} of {','.join(args.signatures)})")
        version_dir, tflite_files, result["export"] = export(model, representative, images[:256], args.variants,
                                                             args.signatures, root)
        loaded = tf.saved_model.load(str(version_dir))
        inputs = feeds(loaded, images, args.batches)
        latency = {}
        for signature in args.signatures:
            common.log(f"timing {signature}")
            by_batch = inputs[input_key(signature)]
            table = {f"batch_{b}": {"savedmodel": time_savedmodel(loaded, signature, feed, timer)}
                     for b, feed in by_batch.items()}
            for variant in args.variants:
                path = tflite_files.get(variant, {}).get(signature)
                if path is None:
                    for b in by_batch:
                        table[f"batch_{b}"][f"tflite_{variant}"] = {
                            "status": result["export"]["skipped"].get(f"{signature}.{variant}.tflite", "not exported")}
                    continue
                for b, entry in time_tflite(path, signature, by_batch, timer).items():
                    table[f"batch_{b}"][f"tflite_{variant}"] = entry
            for b, feed in by_batch.items():
                table[f"batch_{b}"]["keras"] = time_keras(model, signature, feed, timer)
            latency[signature] = table
    result["latency"] = latency
    result["targets"] = targets(latency, args.variants)
    out = common.write_result(args.out, result)
    print(report(result, out))
    return 0


def _median(entry, *keys):
    for key in keys:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    return entry


def targets(latency, variants):
    decode = {}
    for variant in variants:
        ms = _median(latency, "decode", "batch_1", f"tflite_{variant}", "call", "median")
        decode[variant] = {"value_ms": ms, "pass": None if ms is None else ms <= DECODE_BATCH1_TARGET_MS}
    headline = decode.get("fp32", {}).get("value_ms")
    saved = _median(latency, "reconstruct", "batch_256", "savedmodel", "median")
    keras_call = _median(latency, "reconstruct", "batch_256", "keras", "call", "median")
    keras_predict = _median(latency, "reconstruct", "batch_256", "keras", "predict_on_batch", "median")
    ratio = common.ratio(saved, keras_call)
    return {
        "tflite_decode_batch1_ms": {
            "target": f"<= {DECODE_BATCH1_TARGET_MS} ms (signature runner call, fp32 file)", "value": headline,
            "pass": None if headline is None else headline <= DECODE_BATCH1_TARGET_MS, "per_variant": decode},
        "savedmodel_vs_keras_reconstruct_batch256": {
            "target": f"<= {SAVEDMODEL_VS_KERAS_TARGET} (SavedModel reconstruct / Keras model(x), batch 256)",
            "value": ratio, "pass": None if ratio is None else ratio <= SAVEDMODEL_VS_KERAS_TARGET,
            "vs_predict_on_batch": common.ratio(saved, keras_predict)},
    }


def report(result, out):
    lines = common.report_header(result, out)
    lines.append(f"export: {result['export']['seconds']} s; skipped: {result['export']['skipped'] or 'none'}")
    for signature, table in result["latency"].items():
        for batch, entries in table.items():
            cells = []
            for name, entry in entries.items():
                if name == "keras":
                    cells += [f"keras.{k} {v['median']:.3f}" for k, v in entry.items()]
                elif "status" in entry:
                    cells.append(f"{name} -")
                else:
                    ms = entry["median"] if "median" in entry else entry["call"]["median"]
                    cells.append(f"{name} {ms:.3f}")
            lines.append(f"{signature:11s} {batch:9s} ms: " + ", ".join(cells))
    for name, target in result["targets"].items():
        lines.append(f"target {name} {target['target']}: {target['value']} -> {target['pass']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

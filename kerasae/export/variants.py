"""The tflite/ folder of an export: every signature x variant converted, load-checked, parity-checked, described.

`_write_tflite` builds it and returns the manifest's "tflite" part. fp16 files are converted
from a copy of the model whose kernels `kerasae.fp16.plan` rounded on training images
(`_fp16_source`), then get their biases and chosen layers back in float32. A file outside its
PARITY_TOLERANCES bound is kept and flagged (ParityWarning) unless parity is strict; a broken
fp32 conversion (BROKEN_FP32) always fails the export.
"""


from kerasae import _backend  # noqa: F401
import tensorflow as tf

from kerasae import fp16 as fp16_lib
from kerasae.export.errors import ExportError
from kerasae.export.parity import BROKEN_FP32, PARITY_TOLERANCES, check_parity, parity_failures, settle_parity
from kerasae.export.saved_model import example_labels, write_saved_model
from kerasae.export.tflite import (_int8_float_ops, _int8_quantization, _io_details, convert_tflite,
                                   frozen_heap, load_interpreter, representative_inputs, reuse_saved_models,
                                   tflite_op_codes)
from kerasae.options import SIGNATURES

#: Representative images the fp16 weights are rounded on (see kerasae.fp16).
NUM_FP16_CALIBRATION_IMAGES = 2000


def _fp16_source(model, fp16_data, path, classes=None):
    """Write the SavedModel fp16 files are converted from to `path`: (path, float32 layer names, description).

    A conditional model's (`classes`) images go with labels cycling through its classes, as int8's do."""
    calibration = fp16_data[:NUM_FP16_CALIBRATION_IMAGES]
    rounded, float32_layers = fp16_lib.plan(model, calibration, bound=PARITY_TOLERANCES["fp16"][1],
                                            labels=example_labels(len(calibration), classes))
    write_saved_model(rounded, path)
    return (path, float32_layers,
            f"GPTQ on {len(calibration)} calibration images for Dense kernels with at most "
            f"{len(calibration) // 2} inputs; nearest for the others")


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
                  signatures=SIGNATURES, fp16=None, classes=None, loaded=None):
    """Convert, load-check and parity-check every signature x variant into out_dir; the manifest's tflite part.

    fp16 files are converted from fp16 = (SavedModel dir, float32 layer names, rounding description),
    a `kerasae.fp16.plan` (default: saved_model_dir, nearest rounding, biases alone float32).
    A file outside its PARITY_TOLERANCES bound is kept, flagged in the manifest and warned about,
    unless `strict_parity`; a broken fp32 conversion (BROKEN_FP32) always fails the export. `classes`: a
    conditional model's number of classes (its signatures take labels). `loaded`: the SavedModel, loaded.
    """
    out_dir.mkdir()
    loaded = tf.saved_model.load(str(saved_model_dir)) if loaded is None else loaded
    # each SavedModel loaded once, not twice per conversion; the heap scanned by each conversion's gc.collect()
    # only for what the conversions made
    with reuse_saved_models({saved_model_dir: loaded}), frozen_heap():
        files, skipped = _convert_all(saved_model_dir, out_dir, variants, representative_data, signatures, fp16,
                                      classes, loaded)
    parity = check_parity(saved_model_dir, [out_dir / f for f in files], parity_data, classes=classes, loaded=loaded)
    failures = parity_failures(parity)
    fatal = {f: m for f, m in failures.items() if strict_parity}
    for file_name, outputs in parity.items():
        if files[file_name]["variant"] == "fp32" and not all(d["max_diff"] <= BROKEN_FP32 for d in outputs.values()):
            fatal[file_name] = [f"broken conversion: {k} max_diff {d['max_diff']:.3g}" for k, d in outputs.items()]
    settle_parity("TFLite", "tflite", files, parity, failures, fatal)
    for file_name, entry in files.items():
        fp32 = files.get(f"{entry['signature']}.fp32.tflite")
        if fp32:
            entry["size_vs_fp32"] = round(entry["bytes"] / fp32["bytes"], 4)
    return {"files": files, "skipped": skipped, "variants": list(variants), "signatures": list(signatures),
            "out_of_tolerance": {f: ", ".join(m) for f, m in failures.items()},
            "parity_tolerances": {k: {"metric": m, "bound": b, "outputs": list(o) if o else "all"}
                                  for k, (m, b, o) in PARITY_TOLERANCES.items()},
            "int8_io": "float32: int8 files quantize inputs and dequantize outputs inside the graph "
                       "(scale and zero_point under quantization)"}


def _convert_all(saved_model_dir, out_dir, variants, representative_data, signatures, fp16, classes, loaded):
    """Convert and load-check every signature x variant into out_dir: ({file name: entry}, {file name: reason})."""
    files, skipped, fp32_cache = {}, {}, {}
    for signature in signatures:
        for variant in variants:
            file_name = f"{signature}.{variant}.tflite"
            representative = None
            if variant == "int8":
                representative = representative_inputs(loaded, signature, representative_data, classes=classes)
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
    return files, skipped

"""Export kerasae models for use without kerasae: TF Serving SavedModels, TFLite files and (extra) ONNX files.

    exports/<name>/<version>/           a SavedModel (TF Serving reads integer version dirs as they are)
        saved_model.pb, variables/, fingerprint.pb
        assets.extra/manifest.json      what was exported, from what, and the sha256 of every file
        assets.extra/model.keras        the kerasae Keras model (config + weights) to fine-tune: load_keras_model
                                        (not in exports made with keras_model=False: the model is rebuilt
                                        from the manifest's config and the SavedModel's variables)
    exports/<name>/tflite/              the TFLite files of the latest export, one per signature and variant
        <signature>.<variant>.tflite    variants: fp32, fp16, dynamic, int8
        manifest.json                   the same manifest, so the folder can ship to a device on its own
    exported/<name>/onnx/               with onnx=True (pip install "kerasae[onnx]"): <signature>.onnx, tf2onnx from
        <signature>.onnx, manifest.json the SavedModel, checked in onnxruntime; the same manifest

Every signature takes and returns float32 tensors under fixed key names, batch dimension
None, images NHWC in [0, 1] (see `expected_signatures` and exported/README.md):

    serving_default = reconstruct   {x} -> {reconstruction}
    encode                          {x} -> {z} (AE/DAE) or {z_mean, z_log_var} (VAE)
    decode                          {z} -> {x_mean, logits} (AE, Bernoulli VAE) or {x_mean, x_scale} (Gaussian or
                                    discretized-logistic VAE: the std or the logistic scale of p(x|z))
    sample                          {num_samples} (int32 scalar) -> {z, x_mean}
    score                           {x} -> {score}, nats per example (see `score_definition`)

The archive is built with `keras.export.ExportArchive`: wrapping a Keras 3 model in a plain
`tf.Module` gives a SavedModel whose TFLite conversion silently yields NaNs. Each TFLite file
is converted from one signature with TFLite builtin ops only, loaded in LiteRT, checked for
non-builtin ops and compared with the SavedModel on real images before anything is committed.
An export is built in a temporary directory next to its target and renamed into place, so a
reader never sees half a version.

The modules, lowest first (each imports only those before it):

    errors        ExportError, ParityWarning, VerificationError
    saved_model   the signature contract, the endpoints, writing and reading back a SavedModel
    tflite        converting a signature to TFLite, op checks, LiteRT, int8 calibration data
    parity        tolerances; TFLite vs SavedModel and SavedModel vs Keras model measurements
    onnx          the onnx/ folder: tf2onnx conversion, onnxruntime checks (imports the extra lazily)
    manifest      manifest.json, hashes, existing versions, verify
    keras_model   the Keras model behind an export: model.keras or rebuilt from the SavedModel, verified
    variants      the tflite/ folder: every signature x variant converted and checked
    core          export_model and its atomic commit
    runs          export_run: a training run's data for calibration and parity

Monkeypatch a name in the module that uses it (e.g. `kerasae.export.core.write_saved_model`);
the names below are re-exported for callers, so patching them here changes nothing.
"""

from kerasae import _backend  # noqa: F401
from kerasae.export.errors import ExportError, ParityWarning, VerificationError
from kerasae.export.saved_model import (expected_signatures, keras_outputs, saved_model_signatures,
                                        score_definition, write_saved_model)
from kerasae.export.tflite import (convert_tflite, load_interpreter, non_builtin_ops, representative_inputs,
                                   run_tflite, tflite_op_codes)
from kerasae.export.parity import (BROKEN_FP32, KERAS_TOLERANCE, NUM_PARITY_IMAGES, PARITY_TOLERANCES, check_parity,
                                   parity_failures)
from kerasae.export.onnx import ONNX_TOLERANCE, convert_onnx, run_onnx
from kerasae.export.manifest import FORMAT, KERAS_MODEL, MANIFEST, existing_versions, verify
from kerasae.export.keras_model import load_keras_model, model_record, rebuild_keras_model
from kerasae.export.variants import NUM_FP16_CALIBRATION_IMAGES
from kerasae.export.core import export_model
from kerasae.export.runs import NUM_REPRESENTATIVE_IMAGES, export_run, load_images_npz
from kerasae.options import SIGNATURES, VARIANTS, check_name, check_tflite_signatures, check_variants

__all__ = [
    "BROKEN_FP32", "FORMAT", "KERAS_MODEL", "KERAS_TOLERANCE", "MANIFEST", "NUM_FP16_CALIBRATION_IMAGES",
    "NUM_PARITY_IMAGES", "NUM_REPRESENTATIVE_IMAGES", "ONNX_TOLERANCE", "PARITY_TOLERANCES", "SIGNATURES", "VARIANTS",
    "ExportError", "ParityWarning", "VerificationError",
    "check_name", "check_parity", "check_tflite_signatures", "check_variants", "convert_onnx", "convert_tflite",
    "existing_versions", "expected_signatures", "export_model", "export_run", "keras_outputs", "load_images_npz",
    "load_interpreter", "load_keras_model", "model_record", "non_builtin_ops", "parity_failures",
    "rebuild_keras_model", "representative_inputs",
    "run_onnx", "run_tflite", "saved_model_signatures", "score_definition", "tflite_op_codes", "verify",
    "write_saved_model",
]

"""Exporting a codec for apps without kerasae: a folder with

- `saved_model/`: endpoints `analysis` (image [1, H, W, C] in [0, 1] -> latents y), `synthesis` (rounded latents
  -> image), and for a hyperprior `hyper_analysis` (y -> hyper-latents z) and `scales` (rounded z, float64 ->
  the latents' Gaussian scales, float64);
- `tflite/analysis.tflite`, `tflite/synthesis.tflite` (and `hyper_analysis.tflite`): float32, builtin ops, any image
  size (LiteRT resizes the inputs), so a phone can run the transforms, checked in LiteRT against Keras;
- `tables.npz` and `codec.json`: the integer entropy tables, the model's name, version and shapes;
- `decode.py` with `bitstream.py` and `entropy.py`: the reference decoder (numpy, constriction, TensorFlow, Pillow).

Entropy coding needs the float64 `scales` (the SavedModel's), so a file is coded and decoded where TensorFlow
runs; the TFLite transforms serve apps that pair them with it (docs/codec.md).
"""

import shutil
from pathlib import Path

import numpy as np

#: The sources copied into an export as the reference decoder.
DECODER_FILES = {"decoder.py": "decode.py", "bitstream.py": "bitstream.py", "entropy.py": "entropy.py"}


def export_codec(coder, folder, tflite=True):
    """Write `coder`'s export into the new folder `folder` (refused if it exists); -> its path."""
    import keras
    import tensorflow as tf

    from kerasae.codec import coder as coder_lib

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: an export goes to a new folder")
    model = coder.model
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        archive = keras.export.ExportArchive()
        archive.track(model)
        image = tf.TensorSpec([1, None, None, model.channels], tf.float32)
        latents = tf.TensorSpec([1, None, None, model.latent_channels], tf.float32)
        archive.add_endpoint("analysis", lambda x: model.analysis(x, training=False), input_signature=[image])
        archive.add_endpoint("synthesis", lambda y: model.synthesis(y, training=False), input_signature=[latents])
        if coder.hyperprior:
            archive.add_endpoint("hyper_analysis", lambda y: model.hyper_analysis(tf.abs(y), training=False),
                                 input_signature=[latents])
            archive.add_endpoint("scales", coder._scales)
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        np.savez_compressed(tmp / "tables.npz", **coder_lib.flatten_tables(coder.tables))
        coder_lib.write_info(tmp, coder, weights="float32")
        here = Path(__file__).resolve().parent
        for source, target in DECODER_FILES.items():
            shutil.copyfile(here / source, tmp / target)
        if tflite:
            _write_tflite(coder, tmp)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_tflite(coder, folder, size=(64, 96)):
    """The transforms as TFLite files, each checked in LiteRT against Keras on a (size) image."""
    import tensorflow as tf

    from kerasae.export.tflite import convert_tflite, run_tflite

    (folder / "tflite").mkdir()
    model = coder.model
    signatures = tf.saved_model.load(str(folder / "saved_model")).signatures
    rng = np.random.default_rng(0)
    x = rng.random((1, *size, model.channels)).astype(np.float32)
    y = model.analysis(x).numpy()
    checks = {"analysis": (x, y), "synthesis": (np.round(y), model.synthesis(np.round(y)).numpy())}
    if coder.hyperprior:
        checks["hyper_analysis"] = (y, model.hyper_analysis(tf.abs(y)).numpy())
    for name, (inputs, want) in checks.items():
        data = convert_tflite(folder / "saved_model", name, "fp32")
        input_name = next(iter(signatures[name].structured_input_signature[1]))
        got = next(iter(run_tflite(data, name, **{input_name: inputs}).values()))
        scale = max(1.0, float(np.abs(want).max()))
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-3 * scale):
            raise ValueError(f"TFLite {name} differs from Keras (max abs difference "
                             f"{float(np.abs(got - want).max()) if got.shape == want.shape else got.shape})")
        (folder / "tflite" / f"{name}.tflite").write_bytes(data)

"""Files from images and back: a trained codec model, its entropy tables and the file format together.

`Coder(model)` compresses uint8 images of any size to bytes (`bitstream`), tile by tile, each tile padded with its
edge pixels to the model's stride; `decompress` reads them back. The integers a decoder recovers are checked against
a checksum the encoder wrote, so a decoder whose floating point disagrees with the encoder's (another CPU, another
TensorFlow) says so instead of showing a wrong image.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kerasae.codec import bitstream, decoder, entropy, optimize

#: Default tile size in pixels: images up to 1024 x 1024 are one tile; larger ones are coded tile by tile, which
#: bounds the memory the transforms use.
TILE = 1024


def compute_tables(model):
    """The integer entropy tables of a built codec model, keyed "y" (latents) and, for a hyperprior, "z"."""
    from kerasae.codec.models import ScaleHyperpriorCodec

    if isinstance(model, ScaleHyperpriorCodec):
        return {"z": entropy.factorized_tables(model.hyperprior, model.hyper_filters),
                "y": entropy.gaussian_tables()}
    return {"y": entropy.factorized_tables(model.prior, model.latent_channels)}


def flatten_tables(tables):
    return {f"{part}/{key}": value for part, arrays in tables.items() for key, value in arrays.items()}


def float32_copy(model):
    """`model` (a codec of any dtype policy) as a float32 model with the same weights."""
    copy = type(model).from_config({**model.get_config(), "dtype": "float32"})
    copy.set_weights(model.get_weights())
    return copy


def model_version(model, tables):
    """8 bytes identifying the model's weights, configuration and tables: files record it, decoders check it."""
    digest = hashlib.sha256(type(model).__name__.encode())
    # How it was trained (straight_through) does not change what it decodes: left out, so that a model saved
    # before that option existed keeps its version.
    config = {k: v for k, v in model.get_config().items()
              if k not in ("name", "trainable", "dtype", "straight_through")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    for key, value in sorted(flatten_tables(tables).items()):
        digest.update(key.encode() + np.ascontiguousarray(value).tobytes())
    return digest.digest()[:8]


def float64_scales(model):
    """h_s of a hyperprior in float64, as a tf.function of quantized hyper-latents [1, h, w, N] (float64).

    The latents' table indices come from these scales in encoder and decoder alike, and a scale within rounding of
    a table boundary would pick another table on a machine whose float32 convolutions sum in another order; in
    float64 such disagreements are ~1e-9 times as likely. (The latents' checksum still catches one.)"""
    import tensorflow as tf

    steps = []
    for layer in model.hyper_synthesis.layers:
        config = layer.get_config()
        if config["activation"] not in ("relu", "linear") or config["padding"] != "same":
            raise ValueError(f"{layer.name}: float64 scales know 'same' convolutions with relu or no activation")
        steps.append((type(layer).__name__, layer.kernel, layer.bias, int(config["strides"][0]), config["activation"]))

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, model.hyper_filters], tf.float64)])
    def scales(z_hat):
        x = z_hat
        for kind, kernel, bias, stride, activation in steps:  # the float32 weights, exactly, in float64
            kernel = tf.cast(kernel, tf.float64)
            if kind == "Conv2DTranspose":
                shape = tf.shape(x)
                out = tf.stack([shape[0], shape[1] * stride, shape[2] * stride, tf.shape(kernel)[2]])
                x = tf.nn.conv2d_transpose(x, kernel, out, strides=stride, padding="SAME")
            else:
                x = tf.nn.conv2d(x, kernel, strides=stride, padding="SAME")
            x = x + tf.cast(bias, tf.float64)
            x = tf.nn.relu(x) if activation == "relu" else x
        return x

    return scales


def as_image(image, name="image"):
    """uint8 [H, W, C] (C 1 or 3) from an array or PIL image: uint8 as it is, floats in [0, 1] scaled by 255."""
    array = np.asarray(image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be an array of numbers (uint8, or floats in [0, 1]), got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"{name} must be [height, width] or [height, width, 1 or 3] (grayscale or RGB, no alpha), "
                         f"got shape {np.shape(image)}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name} as floats must be finite and in [0, 1]")
        return np.round(array * 255.0).astype(np.uint8)
    if array.min() < 0 or array.max() > 255:
        raise ValueError(f"{name} as integers must be in [0, 255]")
    return array.astype(np.uint8)


class Coder:
    """Compresses and decompresses images with one trained codec model.

    Args:
        model: a built `FactorizedPriorCodec` or `ScaleHyperpriorCodec`.
        name: the name files record (a zoo entry's name, so a decoder can find the model); default `model.name`.
        tables: the model's entropy tables (as `compute_tables` gives, or loaded with the model); computed if None.
        tile: tile size in pixels, a multiple of the model's stride.
    """

    def __init__(self, model, name=None, tables=None, tile=TILE):
        import tensorflow as tf

        from kerasae.codec.models import ImageCodec, ScaleHyperpriorCodec

        if not isinstance(model, ImageCodec):
            raise TypeError(f"model must be a kerasae.codec model, got {type(model).__name__}")
        if not model.built:
            model.build((None, None, None, model.channels))
        if model.dtype_policy.name != "float32":  # trained in mixed precision: files are made in float32
            model = float32_copy(model)
        self.model, self.name = model, str(name or model.name)
        if not isinstance(tile, int) or tile < model.stride or tile % model.stride or tile > 65535:
            raise ValueError(f"tile must be a multiple of the model's stride {model.stride} below 65536, got {tile!r}")
        self.tile = tile
        self.tables = tables if tables is not None else compute_tables(model)
        self.version = model_version(model, self.tables)
        self.hyperprior = isinstance(model, ScaleHyperpriorCodec)
        c, m = model.channels, model.latent_channels
        self.spec = decoder.Spec(self.name, self.version, tile, model.stride, m,
                                 model.hyper_filters if self.hyperprior else 0)

        def function(layer, channels):
            spec = tf.TensorSpec([1, None, None, channels], tf.float32)
            return tf.function(lambda x: layer(x, training=False), input_signature=[spec])

        self._analysis = function(model.analysis, c)
        self._synthesis = function(model.synthesis, m)
        if self.hyperprior:
            self._hyper_analysis = function(lambda y, training: model.hyper_analysis(tf.abs(y), training=training), m)
            self._scales = float64_scales(model)
        self._optimizer = None  # built on first use: optimize_steps > 0

    # ---- one tile ----------------------------------------------------------------------------------------------

    def _pad(self, pixels):
        """uint8 [h, w, C] -> float32 [1, H, W, model channels], edge-padded to the stride."""
        s = self.model.stride
        h, w = pixels.shape[:2]
        padded = np.pad(pixels, [(0, -h % s), (0, -w % s), (0, 0)], mode="edge")
        if padded.shape[-1] != self.model.channels:
            padded = np.repeat(padded, self.model.channels, axis=-1)  # grayscale through an RGB model
        return padded[None].astype(np.float32) / 255.0

    @staticmethod
    def _integers(tensor, what):
        values = tensor.numpy()
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the model's {what} are not finite: it cannot code this image")
        return np.round(values).astype(np.int64)  # the same rounding as tf.round: half to even

    def _quantize_tile(self, pixels, optimize_steps=0):
        """(z_hat or None, y_hat, y's table index) of one tile; latents optimized for it (`kerasae.codec.optimize`)
        when optimize_steps > 0."""
        if optimize_steps:
            if self._optimizer is None:
                self._optimizer = optimize.latent_optimizer(self.model)
            y, z = self._optimizer(self._pad(pixels), *pixels.shape[:2], optimize_steps)
        else:
            y = self._analysis(self._pad(pixels))
            z = self._hyper_analysis(y) if self.hyperprior else None
        y_hat = self._integers(y, "latents")
        if not self.hyperprior:
            return None, y_hat, decoder.channel_index(y_hat.shape)
        z_hat = self._integers(z, "hyper-latents")
        return z_hat, y_hat, decoder.scale_index(self._scales_numpy, z_hat, self.tables)

    def _scales_numpy(self, z_hat):
        return self._scales(z_hat).numpy()

    def _synthesis_numpy(self, y_hat):
        return self._synthesis(y_hat).numpy()

    def _encode_tile(self, pixels, optimize_steps):
        z_hat, y_hat, index = self._quantize_tile(pixels, optimize_steps)
        streams = entropy.encode(y_hat, index, self.tables["y"])
        if z_hat is None:
            return bitstream.Tile(decoder.latent_checksum((y_hat,)), streams)
        z_streams = entropy.encode(z_hat, decoder.channel_index(z_hat.shape), self.tables["z"])
        return bitstream.Tile(decoder.latent_checksum((z_hat, y_hat)), (*z_streams, *streams))

    # ---- whole images ------------------------------------------------------------------------------------------

    def _check_channels(self, channels):
        if channels == 3 and self.model.channels == 1:
            raise ValueError(f"this codec ({self.name}) codes grayscale images; got an RGB image")

    def compress(self, image, optimize_steps=0):
        """The bytes of a file holding `image` (uint8, or floats in [0, 1]; [H, W], [H, W, 1] or [H, W, 3]).

        optimize_steps: steps of gradient descent on each tile's latents (`kerasae.codec.optimize`): 0 (the
        default) takes the analysis transform's; 50 lowered the real file's loss by 10-12% on the validation
        photograph, at ~100x the encoding time. The decoder is the same either way."""
        optimize_steps = optimize.check_steps(optimize_steps)
        pixels = as_image(image)
        height, width, channels = pixels.shape
        self._check_channels(channels)
        tiles = [self._encode_tile(pixels[r:r + h, c:c + w], optimize_steps)
                 for r, c, h, w in decoder.tile_grid(height, width, self.tile)]
        header = bitstream.Header(self.name, self.version, height, width, channels, self.tile, self.model.stride)
        return bitstream.write(header, tiles)

    def reconstruct(self, image, optimize_steps=0):
        """The image `decompress(compress(image, optimize_steps))` gives, computed by the encoder without coding."""
        optimize_steps = optimize.check_steps(optimize_steps)
        pixels = as_image(image)
        height, width, channels = pixels.shape
        self._check_channels(channels)
        out = np.empty_like(pixels)
        for r, c, h, w in decoder.tile_grid(height, width, self.tile):
            y_hat = self._quantize_tile(pixels[r:r + h, c:c + w], optimize_steps)[1]
            out[r:r + h, c:c + w] = decoder.to_pixels(self._synthesis_numpy(y_hat.astype(np.float32)), h, w,
                                                      channels)
        return out

    def decompress(self, data):
        """The uint8 image [H, W, C] a file's bytes hold."""
        return decoder.decompress(data, self.spec, self.tables, self._synthesis_numpy, self._scales_numpy)

    def information_bits(self, image, optimize_steps=0):
        """-log2 of the tables' probabilities of the image's integers: what the streams come within bytes of."""
        optimize_steps = optimize.check_steps(optimize_steps)
        pixels = as_image(image)
        bits = 0.0
        for r, c, h, w in decoder.tile_grid(*pixels.shape[:2], self.tile):
            z_hat, y_hat, index = self._quantize_tile(pixels[r:r + h, c:c + w], optimize_steps)
            bits += entropy.information_bits(y_hat, index, self.tables["y"])
            if z_hat is not None:
                bits += entropy.information_bits(z_hat, decoder.channel_index(z_hat.shape), self.tables["z"])
        return bits

    # ---- saving ------------------------------------------------------------------------------------------------

    def rounded_to_float16(self):
        """A Coder of this model with every weight rounded to float16 (kept as float32 values) and its tables
        recomputed: a model whose weights `save(float16=True)` stores losslessly at half the size."""
        model = type(self.model).from_config(self.model.get_config())
        model.set_weights([np.asarray(w).astype(np.float16).astype(w.dtype) if np.issubdtype(w.dtype, np.floating)
                           else w for w in self.model.get_weights()])
        return Coder(model, name=self.name, tile=self.tile)

    def save(self, path, float16=False):
        """A new folder with the model, its tables (`tables.npz`) and `codec.json` (name, version), written beside
        it first and renamed into place, so a failure leaves nothing half-written. The model is `model.keras`, or
        with `float16` its configuration (`model.json`) and float16 weights (`weights.npz`): a `rounded_to_float16`
        coder's weights, losslessly."""
        import shutil

        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists: a codec is saved to a new folder")
        weights = self.model.get_weights()
        if float16 and any(not np.array_equal(w.astype(np.float16).astype(w.dtype), w) for w in weights):
            raise ValueError("float16=True needs weights that float16 holds exactly: save coder.rounded_to_float16()")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir(parents=True)
            if float16:
                model = {"class": type(self.model).__name__, "config": self.model.get_config()}
                (tmp / "model.json").write_text(json.dumps(model, indent=2, default=list) + "\n")
                np.savez_compressed(tmp / "weights.npz", *[w.astype(np.float16) for w in weights])
            else:
                self.model.save(tmp / "model.keras")
            np.savez_compressed(tmp / "tables.npz", **flatten_tables(self.tables))
            write_info(tmp, self, weights="float16" if float16 else "float32")
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path):
        """The Coder `save` wrote, with the saved tables (never recomputed: they define the files' integers)."""
        path = Path(path)
        if not (path / "codec.json").is_file():
            raise ValueError(f"{path} is not a saved codec (no codec.json)")
        info = json.loads((path / "codec.json").read_text())
        model = _load_model(path)
        tables = decoder.read_tables(path / "tables.npz")
        coder = cls(model, name=info["name"], tables=tables, tile=int(info["tile"]))
        if coder.version.hex() != info["version"]:
            raise ValueError(f"{path}: the model and tables are version {coder.version.hex()}, codec.json says "
                             f"{info['version']} (the folder was changed after it was saved)")
        return coder


def write_info(folder, coder, weights):
    """folder/codec.json: what a decoder must know besides the transforms and tables (`decoder.Spec`'s fields),
    and what `kerasae zoo` shows (class, parameters, weight precision)."""
    model = coder.model
    info = {"name": coder.name, "version": coder.version.hex(), "class": type(model).__name__,
            "tile": coder.tile, "stride": model.stride, "channels": model.channels,
            "latent_channels": model.latent_channels, "hyper_filters": coder.spec.hyper_filters,
            "format_version": bitstream.FORMAT_VERSION, "parameters": int(model.count_params()), "weights": weights}
    (Path(folder) / "codec.json").write_text(json.dumps(info, indent=2) + "\n")


def _load_model(path):
    """A saved codec's model: model.keras through kerasae's safe loader, or model.json + float16 weights.npz (a
    kerasae codec class by name, never another)."""
    from kerasae.codec import models

    if (path / "model.keras").is_file():
        from kerasae.files import load_keras_model

        return load_keras_model(path / "model.keras")
    spec = json.loads((path / "model.json").read_text())
    classes = {c.__name__: c for c in (models.FactorizedPriorCodec, models.ScaleHyperpriorCodec)}
    if spec.get("class") not in classes:
        raise ValueError(f"{path}/model.json names {spec.get('class')!r}, not one of {sorted(classes)}")
    model = classes[spec["class"]].from_config(spec["config"])
    with np.load(path / "weights.npz") as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    expected = model.get_weights()
    if [w.shape for w in weights] != [w.shape for w in expected]:
        raise ValueError(f"{path}/weights.npz does not hold the weights of the model model.json describes")
    model.set_weights([w.astype(e.dtype) for w, e in zip(weights, expected)])
    return model

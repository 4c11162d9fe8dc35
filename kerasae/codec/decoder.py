"""Decoding kerasae codec files: the one implementation `Coder.decompress` and the reference decoder share.

This module, `bitstream.py` and `entropy.py` need only numpy and constriction, plus whatever runs the synthesis
transform (and, for a hyperprior, the float64 scales): the Keras model inside kerasae, the exported SavedModel
outside it. An exported codec carries copies of the three files, so that

    python decode.py IN.kaec OUT.png          # in the export folder; numpy, constriction, tensorflow, pillow

decodes a file with no kerasae installed (see docs/codec.md).
"""

import json
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

if __package__:
    from . import bitstream, entropy
else:  # a copy beside bitstream.py and entropy.py in an exported codec
    import bitstream
    import entropy


class Spec(NamedTuple):
    """What a decoder must know of the model besides its transforms (an export's codec.json holds it)."""
    name: str
    version: bytes
    tile: int
    stride: int
    latent_channels: int
    hyper_filters: int  # 0 for a factorized prior


def tile_grid(height, width, tile):
    """(row, column, height, width) of each tile, row by row."""
    return [(r, c, min(tile, height - r), min(tile, width - c))
            for r in range(0, height, tile) for c in range(0, width, tile)]


def channel_index(shape):
    """Table index of a factorized density's integers: their channel."""
    return np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape)


def scale_index(scales_fn, z_hat, tables):
    """The latents' table indices from the hyper-latents, through the float64 scales."""
    scales = np.asarray(scales_fn(z_hat.astype(np.float64)), np.float64)
    return entropy.scale_indices(scales, tables["y"]["scales"])


def latent_checksum(arrays):
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array, np.int64).astype("<i8").tobytes(), crc)
    return crc


def to_pixels(x_hat, h, w, channels):
    """uint8 [h, w, channels] of the synthesis' output [1, H, W, C] (a grayscale image through an RGB model: the
    mean of the channels)."""
    pixels = np.round(np.clip(np.asarray(x_hat)[0, :h, :w], 0.0, 1.0) * 255.0).astype(np.uint8)
    if channels != pixels.shape[-1]:
        pixels = np.round(pixels.astype(np.float32).mean(axis=-1, keepdims=True)).astype(np.uint8)
    return pixels


def decode_tile(tile, h, w, channels, spec, tables, synthesis, scales):
    """uint8 [h, w, channels] of one tile's streams."""
    ph, pw = h + (-h % spec.stride), w + (-w % spec.stride)
    y_shape = (1, ph // 16, pw // 16, spec.latent_channels)
    if spec.hyper_filters:
        if len(tile.streams) != 4:
            raise ValueError("a hyperprior tile must hold 4 streams")
        z_shape = (1, ph // 64, pw // 64, spec.hyper_filters)
        z_hat = entropy.decode(*tile.streams[:2], channel_index(z_shape), tables["z"])
        y_hat = entropy.decode(*tile.streams[2:], scale_index(scales, z_hat, tables), tables["y"])
        checked = (z_hat, y_hat)
    else:
        if len(tile.streams) != 2:
            raise ValueError("a factorized-prior tile must hold 2 streams")
        y_hat = entropy.decode(*tile.streams, channel_index(y_shape), tables["y"])
        checked = (y_hat,)
    if latent_checksum(checked) != tile.checksum:
        raise ValueError("the decoded latents do not match the encoder's: the file was written by a model whose "
                         "tables or arithmetic differ from this one's")
    return to_pixels(synthesis(y_hat.astype(np.float32)), h, w, channels)


def decompress(data, spec, tables, synthesis, scales=None):
    """The uint8 image [H, W, C] in a file's bytes. `synthesis` maps float32 latents [1, h, w, M] to images
    [1, H, W, C] in [0, 1]; `scales` maps float64 hyper-latents to float64 scales (hyperprior only)."""
    header, tiles = bitstream.read(data)
    if header.model_name != spec.name or header.model_version != spec.version:
        raise ValueError(f"the file was written by model {header.model_name!r} version {header.model_version.hex()}; "
                         f"this decoder is {spec.name!r} version {spec.version.hex()}")
    if header.channels not in (1, 3) or header.tile != spec.tile or header.stride != spec.stride:
        raise ValueError("the file's channels, tile size or stride do not fit this model")
    if header.height < 1 or header.width < 1:
        raise ValueError("the file's image is empty")
    grid = tile_grid(header.height, header.width, spec.tile)
    if len(grid) != len(tiles):
        raise ValueError(f"the file holds {len(tiles)} tiles where its size needs {len(grid)}")
    out = np.empty((header.height, header.width, header.channels), np.uint8)
    for (r, c, h, w), tile in zip(grid, tiles):
        out[r:r + h, c:c + w] = decode_tile(tile, h, w, header.channels, spec, tables, synthesis, scales)
    return out


def read_tables(path):
    """An export's tables.npz as {"y": {...}, "z": {...}}."""
    tables = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            part, name = key.split("/")
            tables.setdefault(part, {})[name] = arrays[key]
    return tables


def load_export(folder):
    """(Spec, tables, synthesis, scales) of an exported codec folder, through its SavedModel (TensorFlow only)."""
    import tensorflow as tf

    folder = Path(folder)
    info = json.loads((folder / "codec.json").read_text())
    spec = Spec(info["name"], bytes.fromhex(info["version"]), int(info["tile"]), int(info["stride"]),
                int(info["latent_channels"]), int(info.get("hyper_filters") or 0))
    served = tf.saved_model.load(str(folder / "saved_model"))

    def synthesis(y_hat):
        return served.synthesis(tf.constant(y_hat)).numpy()

    def scales(z_hat):
        return served.scales(tf.constant(z_hat)).numpy()

    return spec, read_tables(folder / "tables.npz"), synthesis, scales if spec.hyper_filters else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python decode.py IN OUT.png   (run beside an exported codec's codec.json)", file=sys.stderr)
        return 2
    from PIL import Image

    try:
        data = Path(argv[0]).read_bytes()
        image = decompress(data, *load_export(Path(__file__).resolve().parent))
    except (OSError, ValueError) as err:
        print(f"decode.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(argv[1])
    print(f"{argv[1]}: {image.shape[1]} x {image.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

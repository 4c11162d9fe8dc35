"""The file format of `kerasae.codec` (format version 1). All integers little-endian.

    magic            4 bytes   b"KAEC"
    format version   u8        1
    model name       u8 length + UTF-8
    model version    8 bytes   (`coder.model_version`: a digest of the weights and the entropy tables)
    height, width    u32, u32  the image's size in pixels
    channels         u8        1 (grayscale) or 3 (RGB)
    tile size        u16       tiles are coded independently (multiples of the model's stride)
    stride           u8        each tile is padded (edge values) to a multiple of this, and cropped back
    tile count       u32
    per tile: latents checksum u32 (CRC-32 of the decoded integers), then count u8 and that many streams,
              each a u32 length and its bytes
    checksum         u32       CRC-32 of everything before it

A file is checked whole (its length and checksum) before anything in it is used, so a truncated or altered file is
refused, never decoded into a wrong image; the model's name and version are checked against the decoder's model.
"""

import struct
import zlib
from typing import NamedTuple

MAGIC = b"KAEC"
FORMAT_VERSION = 1


class Header(NamedTuple):
    model_name: str
    model_version: bytes
    height: int
    width: int
    channels: int
    tile: int
    stride: int


class Tile(NamedTuple):
    checksum: int
    streams: tuple


def write(header, tiles):
    """bytes of a file holding `header` and `tiles` (a list of `Tile`)."""
    name = header.model_name.encode("utf-8")
    if len(name) > 255 or len(header.model_version) != 8:
        raise ValueError("the model name must be at most 255 bytes and the version 8 bytes")
    parts = [MAGIC, struct.pack("<BB", FORMAT_VERSION, len(name)), name, header.model_version,
             struct.pack("<IIBHBI", header.height, header.width, header.channels, header.tile, header.stride,
                         len(tiles))]
    for tile in tiles:
        parts.append(struct.pack("<IB", tile.checksum, len(tile.streams)))
        for stream in tile.streams:
            parts += [struct.pack("<I", len(stream)), bytes(stream)]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("the file is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def read(data):
    """(Header, [Tile]) of a file's bytes; ValueError for anything that is not a whole, unaltered kerasae file."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:4] != MAGIC:
        raise ValueError("not a kerasae codec file (it does not start with KAEC)")
    if len(data) < 8 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("the file is truncated or corrupted (its checksum does not match)")
    reader = _Reader(data[4:-4])
    version, name_length = reader.unpack("<BB")
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version} is not supported (this kerasae reads version {FORMAT_VERSION})")
    name = reader.take(name_length).decode("utf-8")
    model_version = reader.take(8)
    height, width, channels, tile, stride, count = reader.unpack("<IIBHBI")
    header = Header(name, model_version, height, width, channels, tile, stride)
    tiles = []
    for _ in range(count):
        checksum, streams = reader.unpack("<IB")
        tiles.append(Tile(checksum, tuple(reader.take(reader.unpack("<I")[0]) for _ in range(streams))))
    if reader.pos != len(reader.data):
        raise ValueError("the file has bytes after its last tile")
    return header, tiles

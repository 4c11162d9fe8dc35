"""Compression: what an image costs in bytes (or bits per dimension) and what comes back.

Classical codecs through Pillow (lossless PNG and WebP; JPEG at several qualities), an
autoencoder's code quantized to 8 bits per dimension, and a VQ-VAE's integer codes, at a
fixed length (L * log2(K) bits) or entropy-coded with its factorized prior; the rate-distortion
rows these give are what `plots.save_rate_distortion` draws.
"""

import io

import numpy as np

from kerasae.running import _map, as_test_images, codes, psnr


def _to_uint8(x):
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def jpeg_payload_bytes(data):
    """Bytes of a single-scan (baseline) JPEG's entropy-coded data: the file less its markers, headers and tables.

    The rest (SOI, JFIF, quantization and Huffman tables, frame and scan headers, EOI) is the same for every
    image of one size, quality and Huffman table set: an abbreviated JPEG stream leaves it to the decoder, as a
    VQ-VAE leaves its codebook. Raises ValueError for anything but a single-scan JPEG.
    """
    data = bytes(data)
    if data[:2] != b"\xff\xd8":
        raise ValueError("data: not a JPEG stream (no SOI marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"data: no JPEG marker at byte {i}")
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker other than a stuffed 0xFF00 or RSTn
            start = j = i + 2 + length
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= len(data):
                    raise ValueError("data: a truncated JPEG stream (its scan has no end)")
                if data[j + 1] != 0x00 and not 0xD0 <= data[j + 1] <= 0xD7:
                    break
                j += 2
            if data[j:j + 2] != b"\xff\xd9" or j + 2 != len(data):
                raise ValueError("data: not a single-scan JPEG (more follows the first scan)")
            return j - start
        i += 2 + length
    raise ValueError("data: a JPEG stream without a scan")


def png_payload_bytes(data):
    """Bytes of a PNG's compressed image data (the IDAT chunks' contents); the signature, IHDR, IEND and each
    chunk's length, type and CRC are the same for every image of one size and colour type."""
    data = bytes(data)
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("data: not a PNG stream (no signature)")
    i, payload = 8, 0
    while i + 8 <= len(data):
        length, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        if kind == b"IDAT":
            payload += length
        elif kind not in (b"IHDR", b"IEND"):
            raise ValueError(f"data: a PNG chunk {kind!r} an image of one size would not repeat")
        i += 12 + length
    return payload


_PAYLOAD = {"JPEG": jpeg_payload_bytes, "PNG": png_payload_bytes}


def codec_rate_distortion(x, fmt, **options):
    """Mean bytes per image and mean PSNR (dB) of images x [N, H, W, 1] saved one by one with Pillow.

    `bytes_per_image` is the whole file; `payload_bytes_per_image` its image-dependent part (JPEG's scan
    data, PNG's IDAT data), `fixed_bytes_per_image` the headers and tables every file of this codec and
    setting repeats, which a decoder can hold as a model holds its decoder (abbreviated streams).
    """
    from PIL import Image

    sizes, payloads, decoded = [], [], []
    for img in _to_uint8(x)[..., 0]:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format=fmt, **options)
        sizes.append(buf.tell())
        payloads.append(_PAYLOAD[fmt](buf.getvalue()))
        buf.seek(0)
        decoded.append(np.asarray(Image.open(buf), np.float32) / 255.0)
    fixed = np.asarray(sizes) - np.asarray(payloads)
    return {"bytes_per_image": float(np.mean(sizes)), "payload_bytes_per_image": float(np.mean(payloads)),
            "fixed_bytes_per_image": float(np.mean(fixed)), "fixed_bytes_vary": bool(fixed.min() != fixed.max()),
            "psnr_db": float(np.mean(np.minimum(psnr(x, np.stack(decoded)[..., None]), 100.0)))}


#: Lossless codecs Pillow writes: name -> save() options. WebP's lossless mode at its slowest (best) effort.
LOSSLESS_CODECS = {"PNG": dict(format="PNG", optimize=True),
                   "WebP lossless": dict(format="WEBP", lossless=True, quality=100, method=6)}


def lossless_bits_per_dim(x, codec="PNG"):
    """Bits per dimension (8 * file bytes / (H * W * C)) of 8-bit images x [N, H, W, C], each saved alone
    as one file (headers included: what storing the image costs); [N] float64. Decoding checks losslessness."""
    from PIL import Image

    if codec not in LOSSLESS_CODECS:
        raise ValueError(f"codec must be one of {', '.join(LOSSLESS_CODECS)}, got {codec!r}")
    pixels = _to_uint8(x)
    bits = np.empty(len(pixels))
    for i, img in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, **LOSSLESS_CODECS[codec])
        bits[i] = 8.0 * buf.tell() / img.size
        buf.seek(0)
        decoded = np.asarray(Image.open(buf).convert("L" if img.shape[-1] == 1 else "RGB"))
        if not np.array_equal(decoded.reshape(img.shape), img):
            raise AssertionError(f"{codec} did not return image {i} unchanged")
    return bits


def quantized_code_rate_distortion(model, x_train, x_test, bits=8):
    """Codes quantized to `bits` per dimension (ranges fixed on the training codes), decoded; PSNR vs x_test.

    The rate counts the code only: the decoder and the per-dimension ranges are shared by
    every image (reported separately as `decoder_bytes`, float32 weights), i.e. amortized
    over an unlimited number of images.
    """
    z_train, z_test = codes(model, x_train), codes(model, x_test)
    low, high = z_train.min(axis=0), z_train.max(axis=0)
    levels = 2**bits - 1
    q = np.rint((np.clip(z_test, low, high) - low) / np.maximum(high - low, 1e-12) * levels)
    z_hat = (low + q / levels * (high - low)).astype(np.float32)
    x_hat = _map(model.decode, z_hat)
    decoder_bytes = int(sum(np.asarray(w).nbytes for w in model.decoder.weights))
    return {"bytes_per_image": model.latent_dim * bits / 8, "psnr_db": float(np.mean(psnr(x_test, x_hat))),
            "psnr_unquantized_db": float(np.mean(psnr(x_test, _map(model.decode, z_test)))),
            "decoder_bytes": decoder_bytes, "bits_per_dim": bits, "latent_dim": model.latent_dim}


JPEG_QUALITIES = (5, 10, 25, 50, 75, 90)


def vq_rate_distortion(model, x_test, batch_size=1000):
    """A VQ-VAE's integer codes: fixed-length bytes (L * log2(K) bits), entropy-coded bytes under its factorized
    prior (`VQVAE.code_length_bits`; an ideal arithmetic coder), PSNR of the decoded codes, codebook use.

    A batch at a time (x_test an array or `TestImages`): code lengths and PSNRs summed, code counts added."""
    counts, bits, psnr_sum, images = np.zeros(model.num_embeddings, np.int64), 0.0, 0.0, 0
    for _, xb, _ in as_test_images(x_test).batches(batch_size):
        indices = np.asarray(model.encode(xb))
        counts += np.bincount(indices.reshape(-1), minlength=model.num_embeddings)
        bits += float(np.asarray(model.code_length_bits(indices), np.float64).sum())
        psnr_sum += float(np.minimum(psnr(xb, np.asarray(model.decode(indices))), 100.0).sum())
        images += len(xb)
    p = counts[counts > 0] / counts.sum()
    return {"bytes_per_image": model.bits_per_image / 8, "entropy_coded_bytes_per_image": bits / images / 8,
            "psnr_db": psnr_sum / images, "num_codes": model.num_codes,
            "codebook_size": model.num_embeddings, "codes_used": int((counts > 0).sum()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "decoder_bytes": int(sum(np.asarray(w).nbytes for w in model.decoder.weights)
                                 + np.asarray(model.codebook).nbytes)}


def compression_table(models, x_train, x_test, vq_models=None):
    """Rate-distortion rows: each AE (8-bit codes), each VQ-VAE (its integer codes), PNG (lossless) and JPEG at
    several qualities."""
    rows = [{"method": f"{name} (8-bit code)", **quantized_code_rate_distortion(m, x_train, x_test)}
            for name, m in models.items()]
    rows += [{"method": f"{name} (VQ codes)", **vq_rate_distortion(m, x_test)} for name, m in (vq_models or {}).items()]
    rows.append({"method": "PNG", **codec_rate_distortion(x_test, "PNG", optimize=True)})
    rows += [{"method": f"JPEG q={q}", "quality": q, **codec_rate_distortion(x_test, "JPEG", quality=q)}
             for q in JPEG_QUALITIES]
    return rows

"""Rate-distortion measurement of image codecs: kerasae's files against Pillow's JPEG, WebP, AVIF and PNG.

Every rate is the length of a real file (bits per pixel = 8 * bytes / (height * width)); every distortion is
measured on the image decoded from that file. `bd_rate` is Bjontegaard's average rate difference.
"""

import io
import time

import numpy as np

#: Pillow's lossy codecs and the qualities swept: JPEG as libjpeg writes it for the web (4:2:0, optimized Huffman
#: tables), WebP at its slowest, best method, AVIF (libavif, Pillow's default speed).
BASELINES = {
    "jpeg": ("JPEG", (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90), {"subsampling": "4:2:0", "optimize": True}),
    "webp": ("WEBP", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90), {"method": 6}),
    "avif": ("AVIF", (10, 20, 30, 40, 50, 60, 70, 80, 90), {}),
}


def psnr(reference, decoded):
    """PSNR in dB of uint8 images over all pixels and channels."""
    mse = np.mean((np.asarray(reference, np.float64) - np.asarray(decoded, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ms_ssim(reference, decoded):
    """MS-SSIM (Wang et al. 2003; TensorFlow's five scales) of uint8 images, on the RGB (or gray) values."""
    import tensorflow as tf

    if min(np.shape(reference)[:2]) < 161:  # five scales of an 11-tap window: 11 * 2**4 pixels, less the edges
        raise ValueError(f"MS-SSIM needs images of at least 161 x 161 pixels, got {np.shape(reference)[:2]}")
    a, b = (tf.constant(np.asarray(x, np.float32)[None]) for x in (reference, decoded))
    return float(tf.image.ssim_multiscale(a, b, max_val=255.0)[0])


def pillow_encode(image, name, quality):
    """The file bytes of uint8 `image` [H, W, C] through baseline codec `name` at `quality` (PNG: lossless)."""
    from PIL import Image

    if name == "png":
        fmt, options = "PNG", {"optimize": True}
    else:
        fmt, _, options = BASELINES[name]
        options = {**options, "quality": int(quality)}
    pixels = np.asarray(image)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pillow_decode(data, shape):
    """The uint8 image of shape `shape` in a file Pillow reads."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("L" if shape[-1] == 1 else "RGB")).reshape(shape)


def pillow_file(image, name, quality):
    """(file bytes, decoded uint8 image) of `image` through baseline codec `name` at `quality` (or PNG)."""
    data = pillow_encode(image, name, quality)
    return data, pillow_decode(data, np.shape(image))


def measure(image, encode, decode):
    """One rate-distortion point: bytes, bpp, PSNR, MS-SSIM and the seconds to encode and decode."""
    start = time.perf_counter()
    data = encode(image)
    middle = time.perf_counter()
    decoded = decode(data)
    end = time.perf_counter()
    h, w = image.shape[:2]
    quality = psnr(image, decoded)
    lossless = quality == float("inf")  # (PNG): no distortion to report
    return {"bytes": len(data), "bpp": 8 * len(data) / (h * w), "psnr": None if lossless else quality,
            "ms_ssim": None if lossless else ms_ssim(image, decoded), "encode_s": middle - start,
            "decode_s": end - middle}


def bd_rate(anchor, test):
    """Bjontegaard delta rate in percent of curve `test` against `anchor`, each [(bpp, psnr), ...]: the mean
    difference of log-rate at equal PSNR over the PSNR range both cover, through monotone cubic (PCHIP)
    interpolation. Negative: `test` needs fewer bits for the same quality."""
    from scipy.interpolate import PchipInterpolator

    curves = []
    for points in (anchor, test):
        points = sorted((float(d), float(np.log(r))) for r, d in points)
        d, log_r = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        if len(d) < 2 or np.any(np.diff(d) <= 0):
            raise ValueError("each curve needs two or more points of strictly increasing PSNR")
        curves.append((d, log_r))
    low, high = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if low >= high:
        raise ValueError(f"the curves' PSNR ranges do not overlap ({low:.2f} >= {high:.2f} dB)")
    integrals = [PchipInterpolator(d, log_r).integrate(low, high) for d, log_r in curves]
    return float((np.exp((integrals[1] - integrals[0]) / (high - low)) - 1) * 100)


def mean_curve(records):
    """Per quality of one codec's records (dicts with `quality`, `bpp`, `psnr`, `ms_ssim`): the means over
    images (None for a lossless codec's distortions)."""
    out = []
    for quality in sorted({r["quality"] for r in records}):
        rows = [r for r in records if r["quality"] == quality]
        point = {"quality": quality, "images": len(rows)}
        for key in ("bpp", "psnr", "ms_ssim"):
            values = [r[key] for r in rows]
            point[key] = None if None in values else float(np.mean(values))
        out.append(point)
    return out

"""Codec rates that compare like with like: a JPEG's or PNG's payload apart from the headers and tables every file
of the codec repeats, and the published codec rows re-measured from the MNIST test images."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from kerasae import compression

from conftest import REPO

RESULTS = REPO / "benchmarks" / "results"


def _encode(img, fmt, **options):
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format=fmt, **options)
    return buf.getvalue()


def _pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


@pytest.fixture(scope="module")
def two_images(mnist_small):
    return [np.rint(x[..., 0] * 255).astype(np.uint8) for x in mnist_small.x_test[:2]]


@pytest.mark.parametrize("quality", [5, 25, 90])
def test_a_jpeg_payload_decodes_behind_another_files_headers(two_images, quality):
    """What jpeg_payload_bytes calls fixed is shareable: image A's headers and tables, then image B's scan data
    and an EOI, decode to image B exactly (an abbreviated stream whose tables the decoder holds)."""
    a, b = (_encode(img, "JPEG", quality=quality) for img in two_images)
    pa, pb = compression.jpeg_payload_bytes(a), compression.jpeg_payload_bytes(b)
    assert pa != pb and len(a) - pa == len(b) - pb  # the headers are the same size; the payloads differ
    header_a = a[:len(a) - pa - 2]
    sos = header_a.rfind(b"\xff\xda")  # the headers end with the scan header, the file with EOI
    assert int.from_bytes(header_a[sos + 2:sos + 4], "big") == len(header_a) - sos - 2 and a[-2:] == b"\xff\xd9"
    spliced = header_a + b[len(b) - pb - 2:]
    assert header_a == b[:len(b) - pb - 2]  # byte for byte: nothing image-dependent is counted as fixed
    np.testing.assert_array_equal(_pixels(spliced), _pixels(b))
    blank = _encode(np.zeros((28, 28), np.uint8), "JPEG", quality=quality)
    assert len(blank) - compression.jpeg_payload_bytes(blank) == len(a) - pa  # a blank image: headers + a few bytes


def test_a_png_payload_is_its_idat_data(two_images):
    a, b = (_encode(img, "PNG", optimize=True) for img in two_images)
    pb = compression.png_payload_bytes(b)
    # Rebuild B from A's signature and IHDR, B's IDAT chunk and A's IEND: the fixed part is shareable.
    ihdr_end, iend = 8 + 25, a[-12:]
    spliced = a[:ihdr_end] + b[ihdr_end:len(b) - 12] + iend
    np.testing.assert_array_equal(_pixels(spliced), _pixels(b))
    assert len(b) - pb == 8 + 25 + 12 + 12 * b.count(b"IDAT")  # signature, IHDR, IEND and each IDAT's framing


@pytest.mark.parametrize("data, message", [(b"GIF89a", "not a JPEG"), (b"\xff\xd8\xff\xe0\x00\x10JFIF", "without a scan"),
                                           (b"\xff\xd8\x00\x00\x00\x00", "no JPEG marker")])
def test_a_stream_that_is_not_a_single_scan_jpeg_is_refused(data, message, two_images):
    with pytest.raises(ValueError, match=message):
        compression.jpeg_payload_bytes(data)
    whole = _encode(two_images[0], "JPEG", quality=50)
    with pytest.raises(ValueError, match="truncated"):
        compression.jpeg_payload_bytes(whole[:-2])  # no EOI: cut inside the scan


def test_a_progressive_jpeg_is_refused(two_images):
    buf = io.BytesIO()
    Image.fromarray(two_images[0], mode="L").save(buf, format="JPEG", quality=50, progressive=True)
    with pytest.raises(ValueError, match="single-scan"):
        compression.jpeg_payload_bytes(buf.getvalue())


def test_codec_rows_split_whole_files_into_payload_and_repeated_headers(mnist_small):
    x = mnist_small.x_test[:50]
    for fmt, options in (("JPEG", {"quality": 25}), ("PNG", {"optimize": True})):
        row = compression.codec_rate_distortion(x, fmt, **options)
        files = [_encode(np.rint(img[..., 0] * 255).astype(np.uint8), fmt, **options) for img in x]
        assert row["bytes_per_image"] == pytest.approx(np.mean([len(f) for f in files]))
        assert row["payload_bytes_per_image"] + row["fixed_bytes_per_image"] == pytest.approx(row["bytes_per_image"])
        assert not row["fixed_bytes_vary"] and 0 < row["payload_bytes_per_image"] < row["bytes_per_image"]


@pytest.mark.slow
def test_published_codec_rows_are_remeasured():
    """Each published PNG and JPEG row (whole file, payload, fixed part, PSNR) of both results files, from the
    10,000 MNIST test images (Pillow's libjpeg and zlib are deterministic for the same settings: measured equal)."""
    from kerasae import data as data_lib

    x_test = data_lib.load_mnist().x_test
    published = [r for file, key in (("seed_claims.json", "compression"), ("vq_compression.json", "rows"))
                 for r in json.loads((RESULTS / file).read_text())[key]
                 if r["method"] == "PNG" or r["method"].startswith("JPEG")]
    assert len(published) == 2 * (1 + len(compression.JPEG_QUALITIES))
    measured = {}
    for row in published:
        if row["method"] not in measured:
            fmt, options = (("PNG", {"optimize": True}) if row["method"] == "PNG"
                            else ("JPEG", {"quality": row["quality"]}))
            measured[row["method"]] = compression.codec_rate_distortion(x_test, fmt, **options)
        again = measured[row["method"]]
        for field in ("bytes_per_image", "payload_bytes_per_image", "fixed_bytes_per_image", "psnr_db"):
            assert again[field] == pytest.approx(row[field], rel=1e-9), (row["method"], field)

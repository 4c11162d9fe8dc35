"""The pretrained codec ladders shipped in exported/ (the scale hyperprior's and the factorized prior's): every
quality installed, coding at the rate its model estimates, decoding exactly, and re-measuring the rate-distortion rows
benchmarks/results/codec_rd.json publishes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kerasae.codec import api, bitstream, evaluate, photos

from conftest import REPO

RESULTS = REPO / "benchmarks" / "results" / "codec_rd.json"
#: The published photos re-measured here: the two smallest of the test split (the others take longer, not more).
REMEASURED = ("skimage:chelsea", "skimage:astronaut")
#: How far a re-measured file may be from the published one. Another CPU sums the transforms' float32 convolutions
#: in another order, which could move a latent across a rounding boundary. Measured with quality 3 on chelsea,
#: astronaut and coffee: every weight nudged by 1 or 32 float32 rounding steps (random signs, 5 nudges) changed no
#: file by a byte and the PSNR by at most 7e-5 dB. The bounds are far wider than that and far narrower than a
#: neighbouring quality (~40% of the bytes) or a coder with fewer scale tables (0.6-1.5% more bits).
BYTES_BOUND = 0.005
PSNR_BOUND = 0.02
FAMILIES = tuple(api.LADDERS)
ENTRIES = [(family, quality, name) for family in FAMILIES for quality, name in enumerate(api.LADDERS[family], 1)]


@pytest.fixture(scope="module")
def coders():
    return {name: api.load_coder(name) for _, _, name in ENTRIES}


@pytest.fixture(scope="module")
def published():
    result = json.loads(RESULTS.read_text())
    return result, {(r["codec"][len("kerasae-"):], r["quality"], r["photo"]): r for r in result["records"]
                    if r["codec"] in {f"kerasae-{family}" for family in FAMILIES}}


def test_the_whole_ladders_are_in_the_zoo_and_the_results(coders, published):
    result, rows = published
    for family in FAMILIES:
        assert api.ladder(family) == list(api.LADDERS[family])
        assert {q for f, q, _ in rows if f == family} == set(range(1, len(api.LADDERS[family]) + 1))
    assert sorted(result["codecs"]) == sorted(name for _, _, name in ENTRIES)
    assert not result["quick"]
    assert {p["name"] for p in result["photos"]} == {p.name for p in photos.photos("test")}


@pytest.mark.parametrize("name", [name for _, _, name in ENTRIES])
def test_the_coder_writes_what_the_model_estimates_and_decodes_exactly(coders, name):
    """The range-coded streams of a real photograph are within 1% (or 64 bytes) of the bits the model itself
    estimates (its continuous densities on the rounded latents, as training measures them), and the file decodes
    to the encoder's own reconstruction bit for bit (333 x 517: not a multiple of the stride)."""
    coder = coders[name]
    image = photos.load("skimage:coffee")[:333, :517]
    data = coder.compress(image)
    _, tiles = bitstream.read(data)
    coded = sum(len(s) for tile in tiles for s in tile.streams)
    padded = coder._pad(image)
    estimated = float(coder.model.compute_terms(padded)["bpp"][0]) * padded.shape[1] * padded.shape[2] / 8
    assert abs(coded - estimated) <= max(0.01 * estimated, 64), (coded, estimated)
    np.testing.assert_array_equal(coder.decompress(data), coder.reconstruct(image))


def test_every_quality_decodes_in_a_fresh_process_from_the_file_alone(coders, tmp_path):
    """Files of every quality of both ladders (333 x 517) decoded by another process that is given only the files
    (each names its zoo entry): the encoder's reconstruction, bit for bit; `kerasae compress --quality` (and
    `--family`) writes the same bytes."""
    image = photos.load("skimage:coffee")[:333, :517]
    Image.fromarray(image).save(tmp_path / "in.png")
    paths = []
    for _, _, name in ENTRIES:
        paths.append(tmp_path / f"{name}.kaec")
        paths[-1].write_bytes(coders[name].compress(image))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = ("import sys\nimport numpy as np\nimport kerasae.codec as kc\n"
              "for path in sys.argv[1:]:\n    np.save(path + '.npy', kc.decompress(open(path, 'rb').read()))")
    run = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    for path, (_, _, name) in zip(paths, ENTRIES):
        np.testing.assert_array_equal(np.load(f"{path}.npy"), coders[name].reconstruct(image), err_msg=name)
    for family, flags in (("hyperprior", []), ("factorized", ["--family", "factorized"])):
        run = subprocess.run([sys.executable, "-m", "kerasae", "compress", tmp_path / "in.png",
                              tmp_path / f"cli-{family}.kaec", "--quality", "2", *flags], capture_output=True,
                             text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr
        want = coders[api.LADDERS[family][1]].compress(image)
        assert (tmp_path / f"cli-{family}.kaec").read_bytes() == want, family
        assert want == api.compress(image, quality=2, family=family)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_ladder_goes_from_fewest_bytes_to_best_pixels(published, family):
    """Over the test photos, each quality writes more bytes and gives a higher PSNR than the one below."""
    _, rows = published
    curve = evaluate.mean_curve([row for (f, _, _), row in rows.items() if f == family])
    assert [p["quality"] for p in curve] == list(range(1, len(api.LADDERS[family]) + 1))
    assert all(a["bpp"] < b["bpp"] and a["psnr"] < b["psnr"] for a, b in zip(curve, curve[1:])), curve


@pytest.mark.parametrize("photo", REMEASURED)
def test_the_published_rows_are_measured_again_from_the_shipped_files(coders, published, photo):
    _, rows = published
    image = photos.load(photo)
    for family, quality, name in ENTRIES:
        row = evaluate.measure(image, coders[name].compress, coders[name].decompress)
        want = rows[(family, quality, photo)]
        assert abs(row["bytes"] - want["bytes"]) <= BYTES_BOUND * want["bytes"], (name, row["bytes"], want["bytes"])
        assert row["psnr"] == pytest.approx(want["psnr"], abs=PSNR_BOUND), name
        assert row["ms_ssim"] == pytest.approx(want["ms_ssim"], abs=1e-3), name


@pytest.mark.parametrize("family", FAMILIES)
def test_a_published_optimized_row_is_measured_again_from_the_shipped_file(coders, family):
    """Quality 3 on chelsea with the published number of latent-optimization steps: the published file's bytes and
    quality. The optimization's 100 steps do not amplify float32 rounding: measured on the hyperprior with every
    weight nudged by 1 or 32 rounding steps (4 nudges), the file kept its length to the byte and its PSNR within
    0.005 dB."""
    result = json.loads(RESULTS.read_text())
    steps = result["arguments"]["optimize_steps"]
    want = next(r for r in result["records"] if r["codec"] == f"kerasae-{family}-optimized"
                and r["quality"] == 3 and r["photo"] == "skimage:chelsea")
    coder = coders[api.LADDERS[family][2]]
    image = photos.load("skimage:chelsea")
    row = evaluate.measure(image, lambda x: coder.compress(x, optimize_steps=steps), coder.decompress)
    assert abs(row["bytes"] - want["bytes"]) <= BYTES_BOUND * want["bytes"], (row["bytes"], want["bytes"])
    assert row["psnr"] == pytest.approx(want["psnr"], abs=PSNR_BOUND)
    assert row["ms_ssim"] == pytest.approx(want["ms_ssim"], abs=1e-3)


#: How docs/codec.md and exported/README.md name each ladder in their BD-rate lines.
TITLES = {"hyperprior": "Scale hyperprior", "factorized": "Factorized prior"}


def test_the_docs_quote_the_published_results(published):
    """docs/codec.md and exported/README.md show each ladder's measured curves (the analysis transform's latents and
    latents optimized per photo) and BD-rates as codec_rd.json has them, README's results table its BD-rates."""
    result, _ = published
    curves, bd = result["curves"], result["bd_rate_psnr_percent"]
    steps = result["arguments"]["optimize_steps"]
    for doc in (REPO / "docs" / "codec.md", REPO / "exported" / "README.md"):
        text = doc.read_text()
        for family in FAMILIES:
            optimized = {p["quality"]: p for p in curves[f"kerasae-{family}-optimized"]}
            for point in curves[f"kerasae-{family}"]:
                other = optimized[point["quality"]]
                row = (f"| `{api.LADDERS[family][point['quality'] - 1]}` | {point['quality']} | {point['bpp']:.3f} | "
                       f"{point['psnr']:.2f} | {point['ms_ssim']:.4f} | {other['bpp']:.3f} | {other['psnr']:.2f} | "
                       f"{other['ms_ssim']:.4f} |")
                assert row in text, (doc.name, row)
            for anchor in ("jpeg", "webp", "avif"):
                name = anchor.upper() if anchor != "webp" else "WebP"
                line = (f"{TITLES[family]}: BD-rate (PSNR) against {name}: {bd[f'kerasae-{family} vs {anchor}']:+.1f}% "
                        f"(latents optimized, {steps} steps: {bd[f'kerasae-{family}-optimized vs {anchor}']:+.1f}%)")
                assert line in text, (doc.name, line)
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if "`codec_rd.json`" in line)
    for family in FAMILIES:
        assert (f"{TITLES[family].lower()} {bd[f'kerasae-{family} vs jpeg']:+.1f}% against JPEG, "
                f"{bd[f'kerasae-{family} vs webp']:+.1f}% against WebP, latents optimized per photo ({steps} steps) "
                f"{bd[f'kerasae-{family}-optimized vs jpeg']:+.1f}% / {bd[f'kerasae-{family}-optimized vs webp']:+.1f}%"
                in row), (family, row)

"""kerasae.codec's files: integer tables, range coding, the file format, and compress/decompress end to end (API,
another process, the command line), with small untrained codecs: what is tested is that decoding reproduces the
encoder's integers and image exactly and refuses anything else."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from kerasae.codec import Coder, FactorizedPriorCodec, ScaleHyperpriorCodec, bitstream, decoder, entropy
from kerasae.codec.api import decompress as api_decompress

REPO = Path(__file__).resolve().parents[1]


def small(cls, seed=1, **kwargs):
    return cls(channels=kwargs.pop("channels", 3), filters=12, latent_channels=16, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def coders():
    """A factorized-prior and a hyperprior coder, tiles small enough that a 333 x 517 image takes several."""
    return {"factorized": Coder(small(FactorizedPriorCodec), name="tiny-factorized", tile=256),
            "hyperprior": Coder(small(ScaleHyperpriorCodec), name="tiny-hyperprior", tile=192)}


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return skimage.data.coffee()[:333, :517]  # 333 x 517: not a multiple of either stride


# ---- tables and the range coder ----------------------------------------------------------------------------------

def test_quantized_pmfs_sum_to_the_precision_and_keep_every_symbol():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 300):
        pmf = rng.dirichlet(np.full(n, 0.3)) * rng.uniform(0.9, 1.0)
        counts = entropy.quantize_pmf(pmf)
        assert counts.sum() == 2**entropy.PRECISION and counts.min() >= 1 and len(counts) == n + 1
        # each symbol's integer probability is its float one up to rounding (and the floor of 1)
        # each symbol's integer probability is its float one up to the floor of 1 and rounding (a unit each)
        np.testing.assert_allclose(counts / 2**entropy.PRECISION, np.append(pmf, 1 - pmf.sum()),
                                   atol=(n + 2) / 2**entropy.PRECISION)
    with pytest.raises(ValueError, match="pmf"):
        entropy.quantize_pmf([0.5, np.nan])


def test_gaussian_tables_are_the_gaussians_bins():
    tables = entropy.gaussian_tables()
    for t in (0, 20, len(tables["scales"]) - 1):
        s, n, offset = float(tables["scales"][t]), int(tables["lengths"][t]), int(tables["offsets"][t])
        v = np.arange(offset, offset + n - 1)
        want = norm.cdf(v + 0.5, scale=s) - norm.cdf(v - 0.5, scale=s)
        got = tables["pmfs"][t, :n - 1] / 2**entropy.PRECISION
        big = want > 1e-3
        np.testing.assert_allclose(got[big], want[big], rtol=0.02)
        assert norm.sf(-offset + 0.5, scale=s) * 2 < 1e-8  # the range covers all but the tail mass


def test_scale_indices_pick_the_first_table_scale_not_below():
    table = entropy.SCALE_TABLE
    scales = np.array([0.0, table[0], table[0] * 1.0001, table[10], 1e9])
    np.testing.assert_array_equal(entropy.scale_indices(scales, table), [0, 0, 1, 10, len(table) - 1])


def test_range_coding_round_trips_values_inside_and_far_outside_the_tables():
    tables = entropy.gaussian_tables()
    rng = np.random.default_rng(3)
    index = rng.integers(0, len(tables["lengths"]), size=(4, 7, 9))
    values = np.round(rng.normal(size=index.shape) * tables["scales"][index]).astype(np.int64)
    values[0, 0, :3] = [10**6, -(10**9), 2**40]  # escapes: written in the overflow bytes
    stream, overflow = entropy.encode(values, index, tables)
    np.testing.assert_array_equal(entropy.decode(stream, overflow, index, tables), values)
    assert len(overflow) >= 3


def test_the_stream_costs_what_the_tables_say():
    """The range coder's length is the tables' information content plus a few words (32-bit flushes)."""
    tables = entropy.gaussian_tables()
    rng = np.random.default_rng(4)
    index = rng.integers(0, 40, size=20000)
    values = np.round(rng.normal(size=index.shape) * tables["scales"][index]).astype(np.int64)
    stream, overflow = entropy.encode(values, index, tables)
    ideal = entropy.information_bits(values, index, tables) / 8
    assert ideal < len(stream) <= ideal * 1.01 + 64 and overflow == b""


# ---- the file format --------------------------------------------------------------------------------------------

def test_file_format_round_trips_and_checks_itself():
    header = bitstream.Header("name", b"12345678", 333, 517, 3, 256, 16)
    tiles = [bitstream.Tile(7, (b"abcd", b"")), bitstream.Tile(2**32 - 1, (b"", b"xyz"))]
    data = bitstream.write(header, tiles)
    assert bitstream.read(data) == (header, tiles)
    with pytest.raises(ValueError, match="not a kerasae codec file"):
        bitstream.read(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(TypeError, match="bytes"):
        bitstream.read("KAEC")
    for cut in (4, 10, len(data) - 1):
        with pytest.raises(ValueError, match="truncated"):
            bitstream.read(data[:cut])


# ---- compress / decompress ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["factorized", "hyperprior"])
def test_decompress_gives_the_encoders_reconstruction_exactly(coders, photo, family):
    coder = coders[family]
    data = coder.compress(photo)
    out = coder.decompress(data)
    assert out.shape == photo.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, coder.reconstruct(photo))
    header, tiles = bitstream.read(data)
    assert (header.height, header.width, header.channels) == photo.shape and len(tiles) == 6


@pytest.mark.parametrize("family", ["factorized", "hyperprior"])
def test_file_length_is_the_tables_information_content_plus_the_format(coders, photo, family):
    """The range-coded streams are within 1% (or 64 bytes) of -log2 of the tables' probabilities; the rest of the
    file is the format's header and tile records, byte for byte."""
    coder = coders[family]
    data = coder.compress(photo)
    header, tiles = bitstream.read(data)
    ideal = coder.information_bits(photo) / 8
    coded = sum(len(s) for tile in tiles for s in tile.streams)
    assert ideal < coded <= 1.01 * ideal + 64
    records = sum(5 + 4 * len(tile.streams) for tile in tiles)
    assert len(data) - coded == 4 + 2 + len(header.model_name) + 8 + 16 + records + 4


def test_grayscale_through_an_rgb_codec_and_a_grayscale_codec(coders, photo):
    gray = np.round(photo.mean(axis=-1)).astype(np.uint8)
    rgb_coder = coders["hyperprior"]
    out = rgb_coder.decompress(rgb_coder.compress(gray))
    assert out.shape == gray.shape + (1,)
    np.testing.assert_array_equal(out, rgb_coder.reconstruct(gray))
    gray_coder = Coder(small(FactorizedPriorCodec, channels=1), tile=256)
    np.testing.assert_array_equal(gray_coder.decompress(gray_coder.compress(gray[..., None])),
                                  gray_coder.reconstruct(gray))
    with pytest.raises(ValueError, match="grayscale"):
        gray_coder.compress(photo)


def test_every_corrupted_byte_and_every_truncation_is_refused(coders):
    coder = coders["factorized"]
    image = np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    data = coder.compress(image)
    rng = np.random.default_rng(6)
    for position in list(range(0, len(data), max(1, len(data) // 60))) + [len(data) - 1]:
        broken = bytearray(data)
        broken[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError):
            coder.decompress(bytes(broken))
    for cut in range(0, len(data), max(1, len(data) // 20)):
        with pytest.raises(ValueError):
            coder.decompress(data[:cut])


def test_another_model_version_is_refused(coders):
    coder = coders["factorized"]
    data = coder.compress(np.zeros((16, 16, 3), np.uint8))
    other = small(FactorizedPriorCodec)
    other.set_weights(coder.model.get_weights())
    other.synthesis.layers[-1].bias.assign(other.synthesis.layers[-1].bias + 0.01)  # one bias moved: a new version
    with pytest.raises(ValueError, match="version"):
        Coder(other, name=coder.name, tile=coder.tile).decompress(data)


def test_a_decoder_whose_arithmetic_differs_says_so(coders, photo, monkeypatch):
    """Scales that land in other table entries (another CPU's floating point) decode other integers: the latents'
    checksum catches it instead of showing a wrong image."""
    coder = coders["hyperprior"]
    data = coder.compress(photo[:64, :64])
    true_index = decoder.scale_index
    last = len(entropy.SCALE_TABLE) - 1
    monkeypatch.setattr(decoder, "scale_index", lambda *args: np.minimum(true_index(*args) + 1, last))
    with pytest.raises(ValueError, match="decoded latents do not match"):
        coder.decompress(data)


def test_bad_images_get_clear_errors(coders):
    coder = coders["factorized"]
    with pytest.raises(ValueError, match="alpha"):
        coder.compress(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="finite"):
        coder.compress(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        coder.compress(np.full((8, 8), 300))
    with pytest.raises(TypeError, match="dtype"):
        coder.compress(np.array([["a"]]))
    np.testing.assert_array_equal(coder.reconstruct(np.full((8, 8, 3), 0.5, np.float32)),
                                  coder.reconstruct(np.full((8, 8, 3), 128, np.uint8)))


def test_a_saved_codec_decodes_in_a_fresh_process_and_the_command_line(coders, photo, tmp_path):
    """compress in this process, decompress with `kerasae decompress` in another: the encoder's reconstruction,
    bit for bit; the saved folder reloads to the same version; bad files exit 2 with one line."""
    coder = coders["hyperprior"]
    coder.save(tmp_path / "codec")
    assert Coder.load(tmp_path / "codec").version == coder.version
    Image.fromarray(photo).save(tmp_path / "in.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command's own default (2): TensorFlow's start-up lines held back
    command = [sys.executable, "-m", "kerasae"]
    run = subprocess.run(command + ["compress", tmp_path / "in.png", tmp_path / "out.kaec", "--model",
                                    tmp_path / "codec"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    data = (tmp_path / "out.kaec").read_bytes()
    run = subprocess.run(command + ["decompress", tmp_path / "out.kaec", tmp_path / "back.png", "--model",
                                    tmp_path / "codec"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back.png")), coder.reconstruct(photo))
    np.testing.assert_array_equal(api_decompress(data, model=tmp_path / "codec"), coder.reconstruct(photo))
    (tmp_path / "bad.kaec").write_bytes(data[:-3])
    for args in (["decompress", tmp_path / "bad.kaec", tmp_path / "x.png", "--model", tmp_path / "codec"],
                 ["decompress", tmp_path / "in.png", tmp_path / "x.png"],
                 ["compress", tmp_path / "missing.png", tmp_path / "y", "--model", tmp_path / "codec"],
                 ["compress", tmp_path / "in.png", tmp_path / "out.kaec", "--model", tmp_path / "codec"],
                 ["compress", tmp_path / "in.png", tmp_path / "z", "--model", tmp_path / "codec", "--family",
                  "factorized"]):
        run = subprocess.run(command + args, capture_output=True, text=True, env=env, timeout=300)
        lines = [line for line in run.stderr.splitlines() if not line.startswith(("usage: ", " "))]  # argparse's
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("kerasae "), (args, run.stderr)
        assert "error: " in lines[0], (args, run.stderr)  # usage above a usage error; nothing else on stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "z").exists()
    assert (tmp_path / "out.kaec").read_bytes() == data


def test_float64_scales_are_the_models_scales():
    """The coder's float64 h_s computes what the Keras model's float32 one does, to float32 precision."""
    from kerasae.codec.coder import float64_scales

    model = small(ScaleHyperpriorCodec, seed=2)
    for w in model.hyper_synthesis.weights:  # weights that make every layer matter
        w.assign(np.random.default_rng(7).normal(size=w.shape).astype(np.float32) * 0.3)
    z_hat = np.round(np.random.default_rng(8).normal(size=(1, 3, 5, model.hyper_filters)) * 3)
    want = model.scales(z_hat.astype(np.float32)).numpy()
    got = float64_scales(model)(z_hat).numpy()
    assert got.dtype == np.float64 and got.shape == want.shape == (1, 12, 20, model.latent_channels)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_an_export_decodes_without_kerasae(coders, photo, tmp_path):
    """The export's own decode.py, in a process where importing kerasae fails, gives the encoder's reconstruction
    bit for bit through the SavedModel; the TFLite transforms were checked against Keras when written."""
    from kerasae.codec import export

    coder = coders["hyperprior"]
    folder = export.export_codec(coder, tmp_path / "export")
    assert sorted(p.name for p in (folder / "tflite").iterdir()) == [
        "analysis.tflite", "hyper_analysis.tflite", "synthesis.tflite"]
    (tmp_path / "in.kaec").write_bytes(coder.compress(photo))
    script = ("import runpy, sys; sys.modules['kerasae'] = None; folder = sys.argv[1]; sys.path.insert(0, folder); "
              "sys.argv = ['decode.py'] + sys.argv[2:]; runpy.run_path(folder + '/decode.py', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "in.kaec"),
                          str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), coder.reconstruct(photo))
    with pytest.raises(FileExistsError):
        export.export_codec(coder, folder)


def test_without_a_codec_in_the_zoo_compress_and_decompress_say_what_to_pass(coders, tmp_path, monkeypatch):
    from kerasae.codec import api

    monkeypatch.setenv("KERASAE_ZOO", str(tmp_path))  # an empty zoo
    with pytest.raises(ValueError, match="not installed.*pass model="):
        api.compress(np.zeros((8, 8, 3), np.uint8), quality=2)
    with pytest.raises(ValueError, match="quality must be an integer from 1"):
        api.compress(np.zeros((8, 8, 3), np.uint8), quality=0)
    with pytest.raises(ValueError, match="codec_factorized_q2_photos is not installed"):
        api.compress(np.zeros((8, 8, 3), np.uint8), quality=2, family="factorized")
    with pytest.raises(ValueError, match=r"family must be one of \['factorized', 'hyperprior'\], got 'vq'"):
        api.compress(np.zeros((8, 8, 3), np.uint8), quality=2, family="vq")
    data = coders["factorized"].compress(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="'tiny-factorized', which is not in the zoo: pass model="):
        api.decompress(data)
    assert api.decompress(data, model=coders["factorized"]).shape == (8, 8, 3)


def test_float16_weights_save_at_half_the_size_and_decode_the_same(coders, photo, tmp_path):
    """rounded_to_float16: another version (other weights, recomputed tables) whose float16 save reloads to the
    same version and pixels; a coder whose weights float16 does not hold refuses float16=True."""
    coder = coders["hyperprior"]
    with pytest.raises(ValueError, match="rounded_to_float16"):
        coder.save(tmp_path / "refused", float16=True)
    assert not (tmp_path / "refused").exists()
    half = coder.rounded_to_float16()
    assert half.version != coder.version
    half.save(tmp_path / "f16", float16=True)
    coder.save(tmp_path / "f32")
    loaded = Coder.load(tmp_path / "f16")
    assert loaded.version == half.version and not (tmp_path / "f16" / "model.keras").exists()
    np.testing.assert_array_equal(loaded.decompress(half.compress(photo)), half.reconstruct(photo))
    size = {name: (tmp_path / name / file).stat().st_size
            for name, file in (("f16", "weights.npz"), ("f32", "model.keras"))}
    assert size["f16"] < 0.6 * size["f32"], size
    (tmp_path / "f16" / "model.json").write_text('{"class": "Sequential", "config": {}}')
    with pytest.raises(ValueError, match="not one of"):
        Coder.load(tmp_path / "f16")


def test_a_codec_in_the_zoo_is_listed_shown_and_used_by_name(coders, tmp_path, monkeypatch, capsys):
    from kerasae.cli.zoo import zoo_main
    from kerasae.codec import api

    half = coders["factorized"].rounded_to_float16()
    half.save(tmp_path / "tiny-factorized", float16=True)
    monkeypatch.setenv("KERASAE_ZOO", str(tmp_path))
    assert zoo_main(["--zoo-dir", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny-factorized"))
    assert row.split()[1:3] == ["codec", "photographs"] and f"{half.model.count_params():,} fp16" in row
    assert zoo_main(["show", "tiny-factorized", "--zoo-dir", str(tmp_path)]) == 0
    assert "kerasae compress IN OUT --model tiny-factorized" in capsys.readouterr().out
    image = np.full((20, 30, 3), 90, np.uint8)
    data = api.compress(image, model="tiny-factorized")
    np.testing.assert_array_equal(api.decompress(data), half.reconstruct(image))  # found by the name in the file

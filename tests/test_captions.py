"""Published captions, counts and lists against what they describe: the figures' inputs, the model configs and the
files reproduce writes."""

import json
import re

import pytest

from conftest import REPO

RESULTS_MD = REPO / "docs" / "results.md"
RESULTS = REPO / "benchmarks" / "results"


def test_interpolation_caption_names_the_digits_it_shows():
    """The figure walks between test-set indices (reproduce.INTERPOLATION_PAIRS); the caption names their labels."""
    from kerasae import data, reproduce

    labels = data.load_mnist().y_test
    digits = ", ".join(f"{labels[a]}->{labels[b]}" for a, b in reproduce.INTERPOLATION_PAIRS)
    indices = ", ".join(f"{a}->{b}" for a, b in reproduce.INTERPOLATION_PAIRS)
    text = " ".join(RESULTS_MD.read_text().split())  # captions wrap
    assert f"(rows: digits {digits}; MNIST test images {indices})" in text


def test_denoising_text_quotes_the_plain_aes_loss():
    row = next(r for r in json.loads((RESULTS / "seed_claims.json").read_text())["denoising"]["ae-mlp-32"]
               if (r["noise"], r["level"]) == ("gaussian", 0.3))
    assert row["gain_db"] < 0  # the text says the AE makes it worse
    text = " ".join(RESULTS_MD.read_text().split())
    assert f"{-row['gain_db']:.1f} dB below its noisy input at std 0.3" in text


@pytest.mark.slow
def test_fashion_vae_decoder_weights_are_its_configs():
    """The weights of the Fashion-MNIST VAE's decoder, built from the model config fashion_mnist.json records."""
    import kerasae

    config = json.loads((RESULTS / "fashion_mnist.json").read_text())["runs"]["fashion-vae"]["model_config"]
    weights = kerasae.models.VAE.from_config(config).decoder.count_params()
    quoted = re.findall(r"its decoder \(([\d.]+) M weights", RESULTS_MD.read_text())
    assert quoted == [f"{weights / 1e6:.2f}"], (quoted, weights)


def test_benchmarks_readme_lists_every_file_reproduce_writes():
    from kerasae import reproduce

    text = " ".join((REPO / "benchmarks" / "README.md").read_text().split())
    sentence = text[text.index("The model results of"):text.index("are written by `python scripts/reproduce.py`")]
    assert set(re.findall(r"`(\w+\.json)`", sentence)) == set(reproduce.RESULT_FILES.values())
    assert all((RESULTS / name).exists() for name in reproduce.RESULT_FILES.values())

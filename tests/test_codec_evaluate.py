"""kerasae.codec.evaluate: BD-rate on curves whose answer is known, PSNR, and the baselines' real files."""

import numpy as np
import pytest

from kerasae.codec import evaluate


def test_bd_rate_of_a_curve_needing_a_fixed_fraction_of_the_bits():
    """A codec that needs 0.8x the anchor's bits at every PSNR saves 20%; the anchor against it costs 25%."""
    psnr = np.array([28.0, 30.5, 33.0, 36.0, 39.0])
    anchor_bpp = 0.05 * np.exp(psnr / 6.0)
    anchor = list(zip(anchor_bpp, psnr))
    test = list(zip(0.8 * anchor_bpp, psnr))
    assert evaluate.bd_rate(anchor, test) == pytest.approx(-20.0, abs=1e-6)
    assert evaluate.bd_rate(test, anchor) == pytest.approx(25.0, abs=1e-6)
    # sampled at other PSNRs, the same curve gives the same answer (interpolation, not matched points)
    other = np.array([29.0, 31.0, 34.5, 37.0])
    assert evaluate.bd_rate(anchor, list(zip(0.8 * 0.05 * np.exp(other / 6.0), other))) == pytest.approx(-20, abs=0.5)


def test_bd_rate_refuses_curves_that_do_not_overlap():
    with pytest.raises(ValueError, match="overlap"):
        evaluate.bd_rate([(0.1, 25.0), (0.2, 27.0)], [(0.5, 30.0), (1.0, 33.0)])
    with pytest.raises(ValueError, match="two or more"):
        evaluate.bd_rate([(0.1, 25.0)], [(0.5, 30.0), (1.0, 33.0)])


def test_psnr_and_ms_ssim():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 210, 3), dtype=np.uint8)
    noisy = np.clip(image.astype(int) + rng.choice([-5, 5], image.shape), 0, 255).astype(np.uint8)
    mse = np.mean((image.astype(float) - noisy) ** 2)
    assert evaluate.psnr(image, noisy) == pytest.approx(10 * np.log10(255**2 / mse))
    assert evaluate.psnr(image, image) == float("inf")
    assert evaluate.ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < evaluate.ms_ssim(image, noisy) < 1.0


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif", "png"])
def test_baseline_files_decode_to_what_is_measured(codec):
    import skimage.data

    image = skimage.data.coffee()[:120, :160]
    data, decoded = evaluate.pillow_file(image, codec, 50)
    assert decoded.shape == image.shape and len(data) > 100
    if codec == "png":
        np.testing.assert_array_equal(decoded, image)
    else:
        assert 25 < evaluate.psnr(image, decoded) < 50
        low = evaluate.pillow_file(image, codec, 10)[0]
        assert len(low) < len(data)  # quality is the knob it claims to be

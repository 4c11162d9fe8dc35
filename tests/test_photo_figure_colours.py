"""The path from a decoder-scaled colour VAE's output to a figure's pixels (docs/figures/photos_64_*.png): the
reconstruction is the location channels of the decoder's 2C outputs, in [0, 1], in RGB order, and the figure
writes those colours unchanged. (The 64x64 photo figure's pink cast is the model's, not this path's: see
docs/results.md, "64x64 patches".)"""

import numpy as np
import pytest

import kerasae
from kerasae import evaluate as ev
from kerasae import plots, reproduce_images

#: A constructed decoder output: location logits of three distinct colours, then three scale channels.
RGB = np.array([0.8, 0.5, 0.2])


@pytest.fixture(scope="module")
def model():
    """vae-resnet-64 with a decoder-predicted scale (the photo model's settings), small stages."""
    return kerasae.build("vae-resnet-64", gaussian_scale="decoder", filters=(4, 4, 4, 8), latent_dim=8, seed=0)


def _constant_decoder(model, location, scale_logit):
    """A copy of `model` whose last conv outputs logit(location) in the first C channels and scale_logit in the
    rest, whatever the code."""
    copy = kerasae.build("vae-resnet-64", gaussian_scale="decoder", filters=(4, 4, 4, 8), latent_dim=8, seed=0)
    out = copy.decoder.get_layer("dec_out")
    kernel, bias = out.get_weights()
    bias[:3], bias[3:] = np.log(location / (1 - location)), scale_logit
    out.set_weights([np.zeros_like(kernel), bias])
    return copy


def test_reconstructions_are_the_location_channels(model, rng):
    """Random weights: reconstruct = sigmoid of the decoder's first C output channels at the posterior mean (numpy),
    in [0, 1]; the scale channels are not shown. Constructed output: the three location colours come back in
    their channel order, and scale channels far from them change nothing."""
    x = rng.random((2, 64, 64, 3)).astype(np.float32)
    raw = model.decoder(model.encode(x)[0]).numpy().astype(np.float64)
    assert raw.shape == (2, 64, 64, 6)
    got = model.reconstruct(x).numpy()
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-raw[..., :3])), atol=1e-6)
    assert got.min() >= 0.0 and got.max() <= 1.0
    np.testing.assert_allclose(model.decoder_params(model.encode(x)[0])[0], got, atol=1e-6)
    constant = _constant_decoder(model, RGB, scale_logit=5.0)
    np.testing.assert_allclose(constant.reconstruct(x).numpy(), np.broadcast_to(RGB, (2, 64, 64, 3)), atol=1e-6)


def test_the_photo_figure_keeps_the_colours(model, rng, tmp_path):
    """Tiles reconstructed by the constructed decoder, assembled as photo_results assembles them and saved by
    save_panels: the figure's pixels are RGB * 255 (matplotlib's PNG, read back with PIL)."""
    from PIL import Image

    constant = _constant_decoder(model, RGB, scale_logit=-3.0)
    tiles = ev.reconstruct(constant, rng.random((6, 64, 64, 3)).astype(np.float32))
    photo = reproduce_images._tiles_to_photo(tiles, (128, 192, 3))
    plots.save_panels([("reconstructed", photo)], tmp_path / "figure.png")
    pixels = np.asarray(Image.open(tmp_path / "figure.png").convert("RGB")).reshape(-1, 3).astype(int)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    np.testing.assert_allclose(colours[counts.argmax()], RGB * 255, atol=1.0)

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


def _figure_panels(path):
    """The four image panels of a 2x2 photo figure (test tiles, reconstruction; per photograph), float [0, 1]:
    in each quarter, the rows and columns that are mostly non-white (the image, not its title)."""
    from PIL import Image

    figure = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    h, w = figure.shape[0] // 2, figure.shape[1] // 2
    panels = {}
    for r in range(2):
        for c in range(2):
            quarter = figure[r * h:(r + 1) * h, c * w:(c + 1) * w]
            ink = (quarter < 0.94).any(axis=-1)
            rows = np.flatnonzero(ink.mean(axis=1) > 0.9 * ink.mean(axis=1).max())
            cols = np.flatnonzero(ink[rows].mean(axis=0) > 0.5)
            panels[r, c] = quarter[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return panels


def _block_colours(photo, reconstruction, n=16):
    """Mean colours of the n x n pixel blocks of the photograph panel and of its reconstruction, [blocks, 3] each."""
    h, w = (min(photo.shape[i], reconstruction.shape[i]) // n * n for i in (0, 1))
    return [a[:h, :w].reshape(h // n, n, w // n, n, 3).mean(axis=(1, 3)).reshape(-1, 3)
            for a in (photo, reconstruction)]


@pytest.mark.parametrize("figure", ["photos_64_reconstructions.png", "photos_reconstructions.png"])
def test_what_the_published_photo_figures_show(figure):
    """docs/results.md's reading of the figures, measured on their pixels: in the 64x64 model's reconstructions
    green and blue are one channel (their difference under a fifth of the photographs') while red follows the
    photograph, hence the pink; the 32x32 model's keep the difference and every channel within 0.03."""
    from conftest import REPO

    panels = _figure_panels(REPO / "docs" / "figures" / figure)
    for row in range(2):
        photo, recon = _block_colours(panels[row, 0], panels[row, 1])
        green_blue = np.abs(recon[:, 1] - recon[:, 2]).mean() / np.abs(photo[:, 1] - photo[:, 2]).mean()
        error = np.abs(recon - photo).mean(axis=0)  # per channel
        if figure.startswith("photos_64"):
            assert green_blue < 0.2 and error[0] < 0.04 and min(error[1:]) > 0.04, (green_blue, error)
        else:
            assert green_blue > 0.8 and error.max() < 0.03, (green_blue, error)


def test_the_green_blue_difference_is_the_test_photographs_weakest_colour_direction():
    """docs/results.md's figures for the test photographs' 64x64 tiles: the share of colour variance along
    (G - B) / sqrt 2 and (2R - G - B) / sqrt 6, and the PSNR of the tiles with G and B set to their mean."""
    pytest.importorskip("skimage")
    from kerasae.datasets import photos

    want = {"chelsea": (0.028, 0.056, 27.8), "coffee": (0.020, 0.101, 25.6)}
    for name, (green_blue, red, capped_db) in want.items():
        image = photos.load_photo(name).astype(np.float64) / 255
        tiles = photos.cut_patches(image, 64, 64)
        pixels = tiles.reshape(-1, 3) - tiles.reshape(-1, 3).mean(axis=0)
        total = (pixels**2).sum(axis=1).mean()
        share = [((pixels @ d) ** 2).mean() / total for d in (np.array([0, 1, -1]) / np.sqrt(2),
                                                              np.array([2, -1, -1]) / np.sqrt(6))]
        assert share == pytest.approx([green_blue, red], abs=5e-4), name
        mixed = tiles.copy()
        mixed[..., 1:] = tiles[..., 1:].mean(axis=-1, keepdims=True)
        mse = ((tiles - mixed) ** 2).reshape(len(tiles), -1).mean(axis=1)
        assert np.mean(10 * np.log10(1 / mse)) == pytest.approx(capped_db, abs=0.05), name

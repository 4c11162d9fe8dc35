"""The figures of a run directory (figures/): reconstructions, samples and, for a 2-D code, the latent space."""

from kerasae import plots


def save_figures(model, x_test, y_test, fig_dir, n=10, seed=0):
    """reconstructions.png, samples.png and, for a 2-D code, latent.png."""
    x, y = x_test[:n], None if y_test is None else y_test[:n]
    plots.save_image(plots.reconstruction_grid(x, model.reconstruct_examples(x, y).numpy()),
                     fig_dir / "reconstructions.png", "test images (top) and reconstructions (bottom)")
    plots.save_image(plots.image_grid(model.sample_examples(64, seed=seed).numpy(), 8), fig_dir / "samples.png",
                     "decoded samples z ~ N(0, I)" + (" (label = column)" if model.conditional else ""))
    if model.latent_dim == 2 and not model.conditional:
        plots.save_latent_scatter(model.latent_codes(x_test), y_test, fig_dir / "latent.png")

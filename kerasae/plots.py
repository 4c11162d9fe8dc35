"""Figures: image grids (for PNGs and TensorBoard alike) and 2-D latent scatter plots."""

import numpy as np


def image_grid(images, cols):
    """Tile images [N, H, W, C] into one [rows*H, cols*W, C] array (blank cells pad the last row)."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.ones((rows * h, cols * w, c), np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return grid


def reconstruction_grid(x, x_hat):
    """Inputs on the top row of each pair, reconstructions below."""
    x, x_hat = np.asarray(x), np.asarray(x_hat)
    cols = len(x)
    return image_grid(np.concatenate([x, x_hat]), cols)


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on servers and CI
    import matplotlib.pyplot as plt

    return plt


def save_image(grid, path, title=None):
    """Save an image grid (values in [0, 1]) as a PNG, grayscale when it has one channel."""
    plt = _figure()
    grid = np.clip(grid, 0.0, 1.0)
    h, w = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(max(2.0, w / 40), max(2.0, h / 40) + (0.3 if title else 0)))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_latent_scatter(z, labels, path, title="Test-set codes"):
    """2-D codes coloured by label (all one colour when there are no labels)."""
    plt = _figure()
    z = np.asarray(z)
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels if labels is not None else "tab:blue", cmap="tab10", s=2)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)

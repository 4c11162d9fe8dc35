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
    colours = dict(c="tab:blue") if labels is None else dict(c=labels, cmap="tab10")
    points = ax.scatter(z[:, 0], z[:, 1], s=2, **colours)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_panels(panels, path, cols=None, suptitle=None):
    """Image grids side by side: panels = [(title, grid), ...]."""
    plt = _figure()
    cols = cols or len(panels)
    rows = -(-len(panels) // cols)
    h, w = panels[0][1].shape[:2]
    width = min(8.0, max(3.0, w / 40))  # inches per panel, sized to the grid so stacked strips stay tight
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, (width * h / w + 0.4) * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, grid) in zip(axes.flat, panels):
        grid = np.clip(grid, 0.0, 1.0)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_latent_scatters(panels, labels, path):
    """2-D codes of several models side by side, coloured by label: panels = [(title, z [N, 2]), ...]."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, z) in zip(axes[0], panels):
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=1.5, rasterized=True)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    fig.colorbar(points, ax=list(axes[0]), label="digit")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_rate_distortion(rows, path):
    """PSNR (dB) against bytes per image (log scale); rows carry method, bytes_per_image, psnr_db.

    Codecs are drawn at their payload (`payload_bytes_per_image`, the headers and tables every file repeats left
    to the decoder, as the models' decoders and codebooks are) and, faint, at whole-file size."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    jpeg = sorted((r for r in rows if r["method"].startswith("JPEG")), key=lambda r: r["bytes_per_image"])
    if jpeg:
        psnrs = [r["psnr_db"] for r in jpeg]
        if all("payload_bytes_per_image" in r for r in jpeg):
            line, = ax.plot([r["payload_bytes_per_image"] for r in jpeg], psnrs, "o-", label="JPEG (Pillow) payload")
            ax.plot([r["bytes_per_image"] for r in jpeg], psnrs, "o--", color=line.get_color(), alpha=0.35,
                    label="JPEG whole files")
        else:
            ax.plot([r["bytes_per_image"] for r in jpeg], psnrs, "o-", label="JPEG (Pillow)")
    for r in rows:
        if r["method"].startswith("JPEG"):
            continue
        lossless = r["method"] == "PNG"
        marker = "^" if lossless else "D" if "VQ codes" in r["method"] else "s"
        psnr_shown = min(r["psnr_db"], 60.0)
        size = r.get("payload_bytes_per_image", r["bytes_per_image"])
        points = ax.scatter(size, psnr_shown, marker=marker, s=40,
                            label=r["method"] + (" payload (lossless, shown at 60 dB)" if lossless else ""))
        if "payload_bytes_per_image" in r:  # the whole file, faint
            ax.scatter(r["bytes_per_image"], psnr_shown, marker=marker, s=40, color=points.get_facecolor()[0],
                       alpha=0.35)
        if "entropy_coded_bytes_per_image" in r:  # the same codes entropy-coded: hollow, joined to the fixed length
            colour = points.get_facecolor()[0]
            ax.plot([r["entropy_coded_bytes_per_image"], r["bytes_per_image"]], [r["psnr_db"]] * 2, ":", color=colour)
            ax.scatter(r["entropy_coded_bytes_per_image"], r["psnr_db"], marker=marker, s=40, facecolors="none",
                       edgecolors=[colour])
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (AE, VQ: code only; codecs: payload, faint: whole file;\n"
                  "decoders, codebooks and codec tables shared; hollow: entropy-coded)")
    ax.set_ylabel("PSNR vs original (dB)")
    ax.set_title("Rate-distortion on MNIST test images")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_curves(curves, path, ylabel, title, ylim=None):
    """Learning curves: curves = {label: (epochs, values)}; `ylim` (low, high) or None for all of them."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)

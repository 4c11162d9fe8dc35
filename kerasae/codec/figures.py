"""The codec's evidence figures: rate-distortion curves, and crops of one photograph at matched bits per pixel."""

import numpy as np

_STYLE = {"jpeg": ("JPEG (4:2:0, optimized)", "tab:red"), "webp": ("WebP (method 6)", "tab:orange"),
          "avif": ("AVIF (libavif)", "tab:purple"), "kerasae-hyperprior": ("kerasae hyperprior", "tab:blue"),
          "kerasae-factorized": ("kerasae factorized prior", "tab:cyan"),
          "kerasae-hyperprior-optimized": ("kerasae hyperprior, latents optimized", "tab:green"),
          "kerasae-factorized-optimized": ("kerasae factorized prior, latents optimized", "tab:olive")}


def rd_figure(curves, path):
    """PSNR and MS-SSIM (dB: -10 log10(1 - MS-SSIM)) against bits per pixel, one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for codec, points in curves.items():
        if codec == "png":
            continue
        label, colour = _STYLE.get(codec, (codec, None))
        bpp = [p["bpp"] for p in points]
        axes[0].plot(bpp, [p["psnr"] for p in points], "o-", ms=3, label=label, color=colour)
        axes[1].plot(bpp, [-10 * np.log10(max(1 - p["ms_ssim"], 1e-10)) for p in points], "o-", ms=3,
                     label=label, color=colour)
    top = max((p["bpp"] for c, ps in curves.items() if c.startswith("kerasae") for p in ps), default=2.0)
    for ax, ylabel in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM (dB)")):
        ax.set_xlim(0, min(2.0, 1.3 * top))
        ax.set_xlabel("bits per pixel (file size)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    png = curves.get("png")
    fig.suptitle("Held-out photographs, mean over photos" + (f" (PNG: {png[0]['bpp']:.1f} bpp)" if png else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def crops_figure(images, coders, records, path, optimize_steps=0, size=192):
    """A crop of the first photo: the original, each kerasae codec at its lowest quality (and with its latents
    optimized, if `optimize_steps`), and JPEG and WebP at the quality whose bpp on that photo is closest to the first
    kerasae file's; each titled with its real bpp and PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kerasae.codec import evaluate

    name = next(iter(images))
    image = images[name]
    h, w = image.shape[:2]
    r, c = (h - size) // 2, (w - size) // 2
    panels = [("original", image)]
    lowest = {}
    for _, coder in coders:
        family = coder.name.rsplit("_q", 1)[0]
        if family not in lowest or coder.name < lowest[family].name:
            lowest[family] = coder
    target = None
    for coder in lowest.values():
        for steps in sorted({0, optimize_steps}):
            data = coder.compress(image, optimize_steps=steps)
            decoded = coder.decompress(data)
            bpp = 8 * len(data) / (h * w)
            target = bpp if target is None else target
            title = f"kerasae {coder.name}" + (f"\nlatents optimized ({steps} steps)" if steps else "")
            panels.append((f"{title}\n{bpp:.3f} bpp, {evaluate.psnr(image, decoded):.2f} dB", decoded))
    for codec in ("jpeg", "webp"):
        rows = [x for x in records if x["codec"] == codec and x["photo"] == name]
        if not rows or target is None:
            continue
        best = min(rows, key=lambda x: abs(x["bpp"] - target))
        data, decoded = evaluate.pillow_file(image, codec, best["quality"])
        panels.append((f"{codec.upper()} q{best['quality']}\n{8 * len(data) / (h * w):.3f} bpp, "
                       f"{evaluate.psnr(image, decoded):.2f} dB", decoded))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.3))
    for ax, (title, pixels) in zip(np.atleast_1d(axes), panels):
        crop = pixels[r:r + size, c:c + size]
        ax.imshow(crop[..., 0] if crop.shape[-1] == 1 else crop, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{name}, centre {size} x {size} crop", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the suptitle above three-line panel titles
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Rate-distortion of kerasae's learned codecs against JPEG, WebP, AVIF and PNG on held-out photographs.

    python benchmarks/codec_rd.py                         # the zoo's ladders; benchmarks/results/codec_rd.json
    python benchmarks/codec_rd.py --codecs runs/codec/hyperprior_q*/codec runs/codec/factorized_q*/codec
    python benchmarks/codec_rd.py --optimize-steps 50     # also each codec with its latents optimized per image
    python benchmarks/codec_rd.py --quick                 # a smoke test of this script
    python benchmarks/codec_rd.py --codecs exported/codec_factorized_q* --optimize-steps 100 \
        --reuse benchmarks/results/codec_rd.json          # measure one ladder, keep the other's records

Photos: `kerasae.codec.photos`' test split (whole photographs never cropped for training; each one's source and
licence in the JSON). Every rate is the length of a real file, every distortion measured on what decoding that
file gives (kerasae: `Coder.decompress` of `Coder.compress`'s bytes). Curves: per codec and quality, the mean bpp,
PSNR (RGB) and MS-SSIM over the photos; BD-rates (PSNR) of each kerasae family against JPEG and WebP over the PSNR
range both curves cover; with --optimize-steps N, each kerasae codec again with an encoder that optimizes its
latents for each photo (`Coder.compress(image, optimize_steps=N)`; the same decoder), as "kerasae-<family>-optimized".
Times: seconds per megapixel to encode and decode (medians over photos, this machine). With --reuse, the records of
the kerasae codecs this run does not measure come from an earlier result (the same photos); "reused" names them and
the machine that measured them (their times are that machine's). The baselines are always measured again.
Figures: docs/figures/codec_rd.png and docs/figures/codec_crops.png.
"""

import argparse
import sys
from pathlib import Path

import _common


def codec_points(coders, images, log, optimize_steps=0):
    import re

    from kerasae.codec import evaluate
    from kerasae.codec.ladder import CODEC_CLASSES

    families = {path.rsplit(":", 1)[1]: family for family, path in CODEC_CLASSES.items()}
    records = []
    for folder, coder in coders:
        # the family from the model's class, the quality from the name: <family>_q<Q> (a ladder run's codec) or
        # codec_<family>_q<Q>_photos (the zoo's)
        family = families[type(coder.model).__name__]
        quality = re.search(r"_q(\d+)(_photos)?$", coder.name)
        if quality is None:
            raise ValueError(f"codec {coder.name} ({folder}): its name must end in _q<quality>, e.g. {family}_q3")
        quality = quality.group(1)
        encoders = {f"kerasae-{family}": coder.compress}
        if optimize_steps:
            encoders[f"kerasae-{family}-optimized"] = lambda x, c=coder: c.compress(x, optimize_steps=optimize_steps)
        for label, encode in encoders.items():
            for name, image in images.items():
                row = evaluate.measure(image, encode, coder.decompress)
                records.append({"codec": label, "quality": int(quality), "photo": name, **row})
                log(f"{label} {coder.name} {name}: {row['bpp']:.3f} bpp {row['psnr']:.2f} dB")
    return records


def baseline_points(images, names, log, every=1):
    """Records of Pillow's codecs at every `every`-th quality of their sweep."""
    from kerasae.codec import evaluate

    records = []
    for codec in names:
        qualities = (None,) if codec == "png" else evaluate.BASELINES[codec][1][::every]
        for quality in qualities:
            for name, image in images.items():
                row = evaluate.measure(image, lambda x: evaluate.pillow_encode(x, codec, quality),
                                       lambda data: evaluate.pillow_decode(data, image.shape))
                records.append({"codec": codec, "quality": quality or 0, "photo": name, **row})
        log(f"{codec}: {len(qualities)} qualities x {len(images)} photos")
    return records


def summarize(records):
    import numpy as np

    from kerasae.codec import evaluate

    curves = {c: evaluate.mean_curve([r for r in records if r["codec"] == c])
              for c in sorted({r["codec"] for r in records})}
    bd = {}
    for family in (c for c in curves if c.startswith("kerasae-") and len(curves[c]) >= 2):
        points = [(p["bpp"], p["psnr"]) for p in curves[family]]
        for anchor in ("jpeg", "webp", "avif"):
            if anchor in curves:
                try:
                    bd[f"{family} vs {anchor}"] = evaluate.bd_rate([(p["bpp"], p["psnr"]) for p in curves[anchor]],
                                                                   points)
                except ValueError as err:
                    bd[f"{family} vs {anchor}"] = str(err)
    times = {}
    for codec in curves:
        rows = [r for r in records if r["codec"] == codec]
        mpx = {r["photo"]: r["pixels"] / 1e6 for r in rows}
        times[codec] = {k: float(np.median([r[k] / mpx[r["photo"]] for r in rows])) for k in ("encode_s", "decode_s")}
    return curves, bd, times


def earlier_result(path, images, quick):
    """The earlier result `path` of this benchmark; ValueError unless it measured the same photos (and is as quick)."""
    import json

    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--reuse {path}: {err}") from None
    if not isinstance(earlier, dict) or earlier.get("benchmark") != "codec_rd":
        raise ValueError(f"--reuse {path} is not a result of this benchmark")
    if sorted(p["name"] for p in earlier["photos"]) != sorted(images) or earlier["quick"] != quick:
        raise ValueError(f"--reuse {path} measured other photos (or was {'not ' if quick else ''}a quick run)")
    return earlier


def reuse(earlier, path, records):
    """{"from", "created", "machine", "codecs", "names", "records"}: the records of the kerasae codecs in the
    `earlier` result (read from `path`) that `records` lacks, and the codec names it measured."""
    measured = {r["codec"] for r in records}
    taken = [r for r in earlier["records"] if r["codec"].startswith("kerasae-") and r["codec"] not in measured]
    return {"from": str(path), "created": earlier["created"], "machine": earlier["machine_at_start"],
            "codecs": sorted({r["codec"] for r in taken}), "names": earlier["codecs"] if taken else [],
            "records": taken}


#: The blocks of these files between DOCS_MARKERS that `--docs-from` rewrites: the ladders' table and BD-rates.
DOCS = ("docs/codec.md", "exported/README.md")
DOCS_MARKERS = ("<!-- codec-rd: begin -->", "<!-- codec-rd: end -->")
_TITLES = {"hyperprior": "Scale hyperprior", "factorized": "Factorized prior"}
_ANCHORS = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF"}


def docs_block(result):
    """Markdown of a result's kerasae ladders: a row per zoo entry (bpp, PSNR, MS-SSIM; then with the latents
    optimized), the BD-rates, and the baselines' ranges."""
    curves, bd = result["curves"], result["bd_rate_psnr_percent"]
    steps = result["arguments"]["optimize_steps"]
    lines = ["| zoo entry | quality | bpp | PSNR (dB) | MS-SSIM | bpp, optimized | PSNR, optimized | MS-SSIM, optimized |",
             "|---|---|---|---|---|---|---|---|"]
    families = [f for f in _TITLES if f"kerasae-{f}" in curves]
    for family in families:
        optimized = {p["quality"]: p for p in curves.get(f"kerasae-{family}-optimized", [])}
        for p in curves[f"kerasae-{family}"]:
            o = optimized.get(p["quality"])
            tail = (f"{o['bpp']:.3f} | {o['psnr']:.2f} | {o['ms_ssim']:.4f}" if o else "- | - | -")
            lines.append(f"| `codec_{family}_q{p['quality']}_photos` | {p['quality']} | {p['bpp']:.3f} | "
                         f"{p['psnr']:.2f} | {p['ms_ssim']:.4f} | {tail} |")
    lines.append("")
    for family in families:
        for anchor, name in _ANCHORS.items():
            value = bd.get(f"kerasae-{family} vs {anchor}")
            if isinstance(value, float):
                more = bd.get(f"kerasae-{family}-optimized vs {anchor}")
                more = f" (latents optimized, {steps} steps: {more:+.1f}%)" if isinstance(more, float) else ""
                lines.append(f"- {_TITLES[family]}: BD-rate (PSNR) against {name}: {value:+.1f}%{more}")
    spans = []
    for codec, name in _ANCHORS.items():
        if codec in curves:
            c = curves[codec]
            spans.append(f"{name} {c[0]['bpp']:.3f}-{c[-1]['bpp']:.3f} bpp, {c[0]['psnr']:.2f}-{c[-1]['psnr']:.2f} dB")
    if spans:
        png = f"; PNG {curves['png'][0]['bpp']:.2f} bpp" if "png" in curves else ""
        lines += ["", f"Over the same photographs (qualities swept): {', '.join(spans)}{png}."]
    return "\n".join(lines)


def write_docs(result, paths):
    """Replace the block between DOCS_MARKERS in each file of `paths` with `docs_block(result)`."""
    block = docs_block(result)
    for path in map(Path, paths):
        text = path.read_text()
        begin, end = DOCS_MARKERS
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ValueError(f"{path} must hold one {begin} ... {end} block")
        head, rest = text.split(begin)
        path.write_text(f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: two small crops, few qualities")
    parser.add_argument("--codecs", nargs="*", type=Path, default=None,
                        help="saved codec folders (default: the zoo's ladders)")
    parser.add_argument("--optimize-steps", type=int, default=0, metavar="N",
                        help="also measure each kerasae codec with N steps of latent optimization per photo")
    parser.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                        help="take the records of kerasae codecs not measured now from this earlier result")
    parser.add_argument("--docs-from", type=Path, default=None, metavar="JSON",
                        help=f"measure nothing: rewrite the ladders' tables in {' and '.join(DOCS)} from this result")
    parser.add_argument("--baselines", default=None, help="comma-separated of jpeg,webp,avif,png (default: all)")
    parser.add_argument("--figures", type=Path, default=None, help="folder of the figures (default: docs/figures; "
                        "none with --quick)")
    args = _common.parse_args(parser, argv, lambda a: {"baselines": "jpeg,webp,avif,png"}, "codec_rd.json")
    if args.optimize_steps < 0:
        parser.error(f"--optimize-steps must be >= 0, got {args.optimize_steps}")
    if args.docs_from is not None:
        import json

        write_docs(json.loads(args.docs_from.read_text()), [_common.REPO / doc for doc in DOCS])
        print(f"rewrote the ladders' tables in {' and '.join(DOCS)} from {args.docs_from}")
        return 0
    _common.setup_imports()
    from kerasae.codec import api, coder as coder_lib, photos

    result = _common.header("codec_rd", args, args.quick)  # before measuring: the machine as the run starts, and
    # the start of the window in which other processes' CPU use is counted

    log = _common.log
    chosen = photos.photos("test")
    images = {p.name: photos.load(p) for p in chosen}
    if args.quick:
        images = {name: image[:192, :200] for name, image in list(images.items())[-2:]}
    try:
        earlier = None if args.reuse is None else earlier_result(args.reuse, images, args.quick)
    except ValueError as err:
        parser.error(str(err))
    folders = args.codecs if args.codecs is not None else [api.load_coder(name) for family in api.LADDERS
                                                           for name in api.ladder(family)]
    coders = [(f, f if isinstance(f, coder_lib.Coder) else coder_lib.Coder.load(f)) for f in folders]
    baselines = [b for b in args.baselines.split(",") if b]
    records = baseline_points(images, baselines, log, every=4 if args.quick else 1) + codec_points(coders, images, log,
                                                                                      args.optimize_steps)
    for r in records:
        r["pixels"] = int(images[r["photo"]].shape[0] * images[r["photo"]].shape[1])
    names = [c.name for _, c in coders]
    reused = None
    if earlier is not None:
        reused = reuse(earlier, args.reuse, records)
        names = [n for n in reused["names"] if n not in names] + names
        records += reused.pop("records")
        log(f"reused from {args.reuse}: {', '.join(reused['codecs']) or 'nothing'}")
    curves, bd, times = summarize(records)
    result["photos"] = [{"name": p.name, "source": p.source, "licence": p.licence,
                         "size": list(images[p.name].shape[:2])} for p in chosen if p.name in images]
    result.update({"codecs": names, "curves": curves, "bd_rate_psnr_percent": bd, "seconds_per_megapixel": times,
                   "reused": reused and {k: v for k, v in reused.items() if k != "names"}, "records": records})
    out = _common.write_result(args.out, result)
    print("\n".join(_common.report_header(result, out)))
    for key, value in bd.items():
        print(f"BD-rate {key}: {value:+.1f}%" if isinstance(value, float) else f"BD-rate {key}: {value}")
    if not args.quick or args.figures is not None:
        from kerasae.codec import figures

        folder = args.figures or _common.REPO / "docs" / "figures"
        figures.rd_figure(curves, folder / "codec_rd.png")
        shown = list(coders)
        if earlier is not None and earlier["arguments"].get("codecs") is None:  # it measured the zoo's ladder:
            shown += [(n, api.load_coder(n)) for n in reused["names"]]  # its panels too
        if shown:
            figures.crops_figure(images, shown, records, folder / "codec_crops.png", args.optimize_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

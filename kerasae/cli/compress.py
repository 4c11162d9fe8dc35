"""`kerasae compress IN OUT --quality Q`: an image file (PNG, JPEG, ... anything Pillow reads) into a kerasae codec
file; `kerasae decompress` (kerasae.cli.decompress) reads it back. Every bad input is one line and exit 2."""

import argparse
from pathlib import Path

from kerasae.cli import startup
from kerasae.cli.arguments import _non_negative_int, _positive_int, report_error


def add_codec_flags(p):
    p.add_argument("--model", metavar="DIR_OR_NAME",
                   help="a codec saved with kerasae.codec.Coder.save, or a zoo codec's name (default: the "
                        "pretrained ladder's entry for --quality; decompress: the codec the file names)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")


def build_compress_parser(prog="kerasae compress"):
    from kerasae.codec.api import LADDER, LADDERS

    p = argparse.ArgumentParser(prog=prog, description="Compress an image (grayscale or RGB, any size) with a "
                                "learned codec into a file that `kerasae decompress` reads back.")
    p.add_argument("input", metavar="IN", help="an image file Pillow reads (PNG, JPEG, ...)")
    p.add_argument("output", metavar="OUT", help="the compressed file to write")
    p.add_argument("--quality", type=_positive_int, default=3,
                   help=f"1 (fewest bytes) to {len(LADDER)} (best quality) (default: 3)")
    p.add_argument("--family", choices=sorted(LADDERS), default=None,
                   help="whose pretrained ladder --quality picks from (default: hyperprior)")
    p.add_argument("--optimize-steps", type=_non_negative_int, default=0, metavar="STEPS",
                   help="optimize the latents for this image by STEPS steps of gradient descent: a smaller, better "
                        "file for the same decoder, ~1 s per megapixel per step (default: 0, the fast encoder; "
                        "docs/codec.md measures 50 and 100)")
    add_codec_flags(p)
    return p


def read_image(path):
    """uint8 [H, W, C] of an image file; ValueError naming the file for anything unreadable or not 8-bit."""
    from PIL import Image, UnidentifiedImageError

    import numpy as np

    try:
        with Image.open(path) as image:
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                raise ValueError(f"{path} has an alpha channel, which the codec does not code: flatten it first")
            if image.mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LA"):
                image = image.convert("L" if image.mode in ("1", "L") else "RGB")
            else:
                raise ValueError(f"{path} is a {image.mode} image: the codec codes 8-bit grayscale or RGB")
            return np.asarray(image)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not an image Pillow can read ({' '.join(str(err).split())})") from None


def check_output(path, overwrite):
    """ValueError if `path` exists and may not be replaced."""
    if Path(path).exists() and not overwrite:
        raise ValueError(f"{path} exists (--overwrite replaces it)")


def write_output(path, data, overwrite):
    from kerasae.files import atomic_path

    path = Path(path)
    check_output(path, overwrite)  # again: it may have appeared while the codec ran
    with atomic_path(path, suffix=path.suffix) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            from PIL import Image

            image = data[..., 0] if data.shape[-1] == 1 else data
            Image.fromarray(image).save(tmp, format=_format(path))


def _format(path):
    from PIL import Image

    Image.init()
    return Image.EXTENSION.get(Path(path).suffix.lower(), "PNG")


def compress_main(argv=None, prog="kerasae compress"):
    parser = build_compress_parser(prog)
    args = parser.parse_args(argv)
    if args.model is not None and args.family is not None:
        parser.error("--family picks a pretrained ladder, --model a codec: give one of them")
    try:  # the files first, before TensorFlow starts (seconds)
        image = read_image(args.input)
        check_output(args.output, args.overwrite)
    except ValueError as err:
        return report_error(prog, err)
    startup.start_tensorflow()
    from kerasae.codec import api

    try:
        if args.model is None and args.quality > len(api.LADDER):
            parser.error(f"--quality must be from 1 to {len(api.LADDER)}, got {args.quality}")
        coder = api.load_coder(args.model, None if args.model else args.quality, args.family or "hyperprior")
        data = coder.compress(image, optimize_steps=args.optimize_steps)
        write_output(args.output, data, args.overwrite)
    except (ValueError, TypeError, OSError) as err:
        return report_error(prog, err)
    h, w = image.shape[:2]
    print(f"{args.output}: {len(data):,} bytes, {8 * len(data) / (h * w):.3f} bits per pixel ({w} x {h}, "
          f"{'RGB' if image.ndim == 3 else 'grayscale'}, codec {coder.name})")
    return 0


if __name__ == "__main__":
    from kerasae.cli.main import run_module

    run_module(compress_main, "python -m kerasae.cli.compress")

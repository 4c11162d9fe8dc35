"""`kerasae decompress IN OUT.png`: a kerasae codec file back into an image (the format by OUT's extension, PNG
when it has none Pillow knows). Every bad input is one line and exit 2."""

import argparse

from kerasae.cli import startup
from kerasae.cli.arguments import report_error
from kerasae.cli.compress import add_codec_flags, check_output, write_output


def build_decompress_parser(prog="kerasae decompress"):
    p = argparse.ArgumentParser(prog=prog, description="Decompress a file written by `kerasae compress` (or "
                                "kerasae.codec.compress) into an image.")
    p.add_argument("input", metavar="IN", help="the compressed file")
    p.add_argument("output", metavar="OUT", help="the image to write (PNG unless its extension says otherwise)")
    add_codec_flags(p)
    return p


def decompress_main(argv=None, prog="kerasae decompress"):
    args = build_decompress_parser(prog).parse_args(argv)
    try:  # the files first, before TensorFlow starts (seconds)
        with open(args.input, "rb") as f:
            data = f.read()
        check_output(args.output, args.overwrite)
    except FileNotFoundError:
        return report_error(prog, f"{args.input} does not exist")
    except (ValueError, OSError) as err:
        return report_error(prog, err)
    startup.start_tensorflow()
    from kerasae.codec import api

    try:
        image = api.decompress(data, model=args.model)
        write_output(args.output, image, args.overwrite)
    except (ValueError, TypeError, OSError) as err:
        return report_error(prog, err)
    print(f"{args.output}: {image.shape[1]} x {image.shape[0]}, {'RGB' if image.shape[-1] == 3 else 'grayscale'}")
    return 0


if __name__ == "__main__":
    from kerasae.cli.main import run_module

    run_module(decompress_main, "python -m kerasae.cli.decompress")

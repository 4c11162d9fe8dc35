"""argparse value types the command-line front ends share: each bad value is a one-line usage error."""

import argparse
import sys

from kerasae import options


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def report_error(prog, err, code=2):
    """Write `prog: error: <err on one line>` to stderr, as argparse words a usage error; return `code`."""
    print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return code


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float(low, low_open):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value != value or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text!r}")
        return value

    return parse


def _image_size(text):
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH or SIZE (e.g. 64x64 or 64), got {text!r}")
    return size


def _noise(text):
    kind, _, level = text.partition(":")
    if kind not in options.NOISE_TYPES:
        raise argparse.ArgumentTypeError(f"noise type must be one of {', '.join(options.NOISE_TYPES)}, got {kind!r}")
    try:
        value = float(level) if level else 0.5
    except ValueError:
        raise argparse.ArgumentTypeError(f"noise level must be a number, got {level!r}") from None
    if not (value > 0 and (kind == "gaussian" or value < 1)):
        raise argparse.ArgumentTypeError(
            f"noise level must be > 0{'' if kind == 'gaussian' else ' and < 1'} for {kind}, got {level!r}")
    return kind, value


def _choices(valid):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in valid]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {', '.join(valid)}, got {text!r}")
        return tuple(items)

    return parse


def _variants(text):
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return options.check_variants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _signatures(text):
    try:
        return options.check_tflite_signatures(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("tflite_signatures ", "")) from None

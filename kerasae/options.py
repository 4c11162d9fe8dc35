"""Names and checks that the API and the command line share, importable without TensorFlow.

The CLI parses its arguments with these before TensorFlow loads, so `--help` and a bad
argument answer at once; the modules that own each name import it from here.
"""

import difflib
import numbers
import re

#: tf.distribute strategies `TrainConfig.strategy` / `--strategy` accept (see `kerasae.distribute`).
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
LR_SCHEDULES = ("cosine", "constant")
#: Training precisions `TrainConfig.precision` / `--precision` accept (see `kerasae.training.precision`).
PRECISIONS = ("float32", "bfloat16", "float16", "auto")
#: Denoising corruptions (see `kerasae.models.dae`).
NOISE_TYPES = ("gaussian", "masking", "salt_and_pepper")
#: VAE decoder likelihoods (see `kerasae.models.vae`); the scaled ones learn (or fix) a decoder scale.
LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
SCALED_LIKELIHOODS = ("gaussian", "discretized_logistic")
#: `VAE`'s defaults, here so that the CLI can check its scale flags against them without TensorFlow.
DEFAULT_LIKELIHOOD = "bernoulli"
DEFAULT_GAUSSIAN_SCALE = "shared"
#: Where a scaled likelihood's scale (Gaussian std, logistic scale) comes from: learned per pixel, per channel or
#: shared, fixed, or predicted by the decoder per pixel and image (`VAE(gaussian_scale=...)`, the name predating
#: the logistic; `--scale`).
GAUSSIAN_SCALES = ("pixel", "channel", "shared", "fixed", "decoder")
#: A VAE's p(z): N(0, I), or the VampPrior (Tomczak & Welling 2018), a mixture of the posteriors of
#: learned pseudo-inputs.
PRIORS = ("standard", "vamp")
COLOR_MODES = ("grayscale", "rgb")
DATA_MODES = ("auto", "memory", "stream")  # in memory or read while training; see kerasae.data.open_dataset
#: Exported signatures; reconstruct first, it becomes serving_default.
SIGNATURES = ("reconstruct", "encode", "decode", "sample", "score")
#: TFLite variants an export can write.
VARIANTS = ("fp32", "fp16", "dynamic", "int8")
#: What `kerasae export` and `export_run` convert unless asked for more (`--tflite all`, `--tflite-signatures all`):
#: encode and decode, the halves the other signatures compose (reconstruct is decode(encode(x)), sample decodes
#: N(0, I) draws), as fp32 (the reference, within 1e-5 of the SavedModel) and int8 (a quarter of the bytes, for
#: integer-only accelerators). Every signature stays in the SavedModel. 4 files instead of 19.
DEFAULT_VARIANTS = ("fp32", "int8")
DEFAULT_TFLITE_SIGNATURES = ("encode", "decode")
#: Where exports go unless told otherwise: a folder of the user's, relative to the working directory (never the
#: zoo's folder or the installed package, see `kerasae.files.check_export_dir`).
DEFAULT_EXPORT_DIR = "exports"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def did_you_mean(word, choices):
    """"; did you mean 'x'?" for the closest of `choices` to a mistyped `word`, else "" (difflib's ratio >= 0.6)."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_number(name, value, low=None, high=None, *, low_open=False, high_open=False):
    """A real number in [low, high] (ends open where asked); a clear ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}{hi}, got {value!r}")
    return float(value)


def check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '.', '_' or '-' (no slashes), starting with a letter or "
                         f"digit, got {name!r}")
    return name


def _name_list(names):
    """"a,b" or ["a", "b"] -> ("a", "b"): stripped, blanks and repeats dropped, order kept."""
    if isinstance(names, str):
        names = names.split(",")
    return tuple(dict.fromkeys(n.strip() for n in names or () if n.strip()))


def _is_all(names):
    return isinstance(names, str) and names.strip().lower() == "all"


def check_tflite_signatures(signatures):
    """A subset of SIGNATURES ("a,b", a list, or "all")."""
    signatures = SIGNATURES if _is_all(signatures) else _name_list(signatures)
    unknown = [s for s in signatures if s not in SIGNATURES]
    if unknown or not signatures:
        raise ValueError(f"tflite_signatures must name one or more of {', '.join(SIGNATURES)}, got "
                         f"{', '.join(unknown) or 'none'}")
    return signatures


def check_variants(tflite):
    """A subset of VARIANTS ("a,b", a list, or "all"); () for none."""
    variants = VARIANTS if _is_all(tflite) else _name_list(tflite)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown TFLite variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return variants

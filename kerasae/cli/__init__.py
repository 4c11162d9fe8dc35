"""Command-line front ends: the `kerasae` command (`kerasae.cli.main`), `python -m kerasae` and the
`scripts/*.py` shims, one module per subcommand.

Every bad argument exits with code 2 and a one-line message, as argparse does. Arguments
are parsed before TensorFlow is imported (these modules import none of it at the top), so
`--help` and a usage error answer at once. The names below load on first use, so that
`python -m kerasae.cli.train` runs its module once, as `__main__`, without the package having imported it.
"""

import importlib

_EXPORTS = {
    "FASHION_MNIST_DIR": "reproduce", "REPRODUCE_STAGES": "reproduce", "build_reproduce_parser": "reproduce",
    "reproduce_main": "reproduce", "build_evaluate_parser": "evaluate", "evaluate_main": "evaluate",
    "build_convert_parser": "convert", "convert_main": "convert",
    "build_export_parser": "export", "export_main": "export",
    "build_train_parser": "train", "config_from_args": "train", "print_presets": "train", "train_main": "train",
    "build_zoo_parser": "zoo", "zoo_main": "zoo", "main": "main",
}

__all__ = sorted([*_EXPORTS, "registry"])


def __getattr__(name):
    if name == "registry":  # (the presets the train parser offers)
        return importlib.import_module("kerasae.registry")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__

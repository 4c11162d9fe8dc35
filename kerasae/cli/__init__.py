"""Command-line front ends (`scripts/*.py` are thin shims over these), one module per script.

Every bad argument exits with code 2 and a one-line message, as argparse does. Arguments
are parsed before TensorFlow is imported (these modules import none of it at the top), so
`--help` and a usage error answer at once.
"""

from kerasae import registry  # (the presets the train parser offers)
from kerasae.cli.convert import build_convert_parser, convert_main
from kerasae.cli.export import build_export_parser, export_main
from kerasae.cli.results import (FASHION_MNIST_DIR, REPRODUCE_STAGES, build_evaluate_parser,
                                 build_reproduce_parser, evaluate_main, reproduce_main)
from kerasae.cli.train import build_train_parser, config_from_args, print_presets, train_main

__all__ = ["FASHION_MNIST_DIR", "REPRODUCE_STAGES", "build_convert_parser", "build_evaluate_parser",
           "build_export_parser", "build_reproduce_parser", "build_train_parser", "config_from_args", "convert_main",
           "evaluate_main", "export_main", "print_presets", "registry", "reproduce_main", "train_main"]

"""The `kerasae` command and `python -m kerasae`: `kerasae COMMAND ...` runs `kerasae.cli.COMMAND`'s main.

The dispatcher imports no subcommand until it knows which one, and no TensorFlow at all, so
`kerasae --help`, `kerasae train --help` and a usage error answer at once. A subcommand's usage
errors name the program as invoked (`kerasae train: error: ...`).
"""

import argparse
import importlib
import os
import sys

from kerasae.options import did_you_mean

#: command -> what it does (its module is kerasae.cli.<command>, its entry point <command>_main(argv, prog))
COMMANDS = {
    "train": "train a model from a preset, or fine-tune a saved or pretrained one",
    "export": "export a run or a .keras file as a SavedModel plus TFLite files, or verify an export",
    "evaluate": "evaluate a run on its test split (a table; --json for everything)",
    "convert": "convert a dataset into TFRecord shards that train streams",
    "reproduce": "train, evaluate and write the published results and figures",
    "zoo": "list the pretrained models (zoo), or show one (zoo show NAME)",
    "compress": "compress an image with a learned codec into a file (--quality 1 fewest bytes)",
    "decompress": "decompress a codec file back into an image",
}


def build_parser(prog="kerasae"):
    import kerasae

    width = max(map(len, COMMANDS))
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="kerasae: autoencoders in Keras 3: train, evaluate, export and the pretrained zoo.\n\ncommands:\n"
                    + "\n".join(f"  {name:{width}s}  {text}" for name, text in COMMANDS.items()),
        epilog=f"`{prog} COMMAND --help` lists a command's flags.")
    p.add_argument("command", metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    p.add_argument("--version", action="version", version=f"%(prog)s {kerasae.__version__}")
    return p


def main(argv=None, prog="kerasae"):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(prog)
    if not argv or argv[0].startswith("-"):  # --help, --version, a stray flag, or nothing
        parser.parse_args(argv)
        parser.error("give a COMMAND before its flags")
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}{did_you_mean(command, COMMANDS)} (commands: {', '.join(COMMANDS)})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter (set before it loads)
    entry = getattr(importlib.import_module(f"kerasae.cli.{command}"), f"{command}_main")
    return entry(rest, prog=f"{prog} {command}")


def run_module(entry, prog):
    """`python -m kerasae.cli.COMMAND`: the same as `kerasae COMMAND`, usage errors named after the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(entry(sys.argv[1:], prog=prog))


if __name__ == "__main__":
    sys.exit(main())

"""`scripts/export.py`: export a run or a .keras file (SavedModel + TFLite), or verify an export."""

import argparse
import json
import sys
import warnings
from pathlib import Path

from kerasae import options
from kerasae import files
from kerasae.cli import startup
from kerasae.cli.arguments import _positive_int, _signatures, _variants


def build_export_parser(prog="export.py"):
    p = argparse.ArgumentParser(
        prog=prog, description="Export a kerasae run (or .keras file) as a SavedModel plus TFLite files, "
        "or verify an export (--verify PATH).")
    p.add_argument("source", nargs="?", metavar="RUN_DIR_or_MODEL.keras", help="what to export")
    p.add_argument("--name", help="export name: files go to EXPORT_DIR/NAME/VERSION and EXPORT_DIR/NAME/tflite")
    p.add_argument("--export-dir", default=options.DEFAULT_EXPORT_DIR,
                   help="(default: ./%(default)s; never the zoo's folder or the installed package)")
    p.add_argument("--version", type=_positive_int, help="integer version (default: the next one, from 1)")
    p.add_argument("--tflite", default=",".join(options.DEFAULT_VARIANTS), type=_variants,
                   help=f"comma-separated TFLite variants of {','.join(options.VARIANTS)}, 'all' or 'none' "
                        f"(default: {','.join(options.DEFAULT_VARIANTS)})")
    p.add_argument("--tflite-signatures", default=",".join(options.DEFAULT_TFLITE_SIGNATURES), type=_signatures,
                   help=f"the signatures converted to TFLite, of {','.join(options.SIGNATURES)}, or 'all' (default: "
                        f"{','.join(options.DEFAULT_TFLITE_SIGNATURES)}; the SavedModel has every signature)")
    p.add_argument("--representative-data", metavar="FILE.npz",
                   help="images to calibrate int8 on (array x, x_train or images); default: the run's training data")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--strict-parity", action="store_true",
                   help="fail if a TFLite file misses its parity bound (default: keep it, flagged)")
    p.add_argument("--no-keras-model", dest="keras_model", action="store_false",
                   help="write no assets.extra/model.keras: load_keras_model rebuilds the model from the manifest "
                        "and the SavedModel's variables (the weights stored once, as in the zoo)")
    p.add_argument("--onnx", action="store_true",
                   help="also write NAME/onnx/<signature>.onnx, each checked in onnxruntime against the SavedModel "
                        '(needs the extra: pip install "kerasae[onnx]")')
    p.add_argument("--verify", metavar="PATH", help="check an export's files against its manifest and exit 0/1")
    return p


def export_main(argv=None, prog="export.py"):
    parser = build_export_parser(prog)
    args = parser.parse_args(argv)
    if args.verify:
        if args.source or args.name:
            parser.error("--verify PATH takes no RUN_DIR or --name")
        if not Path(args.verify).exists():
            parser.error(f"--verify: {args.verify} does not exist")
    else:
        if not args.source:
            parser.error("give a RUN_DIR or MODEL.keras to export (or --verify PATH)")
        if not args.name:
            parser.error("--name is required")
        try:
            options.check_name(args.name)
        except ValueError as err:
            parser.error(" ".join(str(err).split()))
        if not Path(args.source).exists():
            parser.error(f"{args.source} does not exist")
        try:
            files.check_export_dir(args.export_dir)
        except ValueError as err:
            parser.error(f"--export-dir: {str(err).removeprefix('export_dir: ')}")
    if args.onnx:
        from kerasae.export.onnx import unavailable

        if unavailable():
            parser.error(f"--onnx {unavailable()}")
    startup.start_tensorflow()
    from kerasae import export as export_lib

    if args.verify:
        problems = export_lib.verify(args.verify)
        for problem in problems:
            print(f"FAIL {problem}")
        if not problems:
            print(f"OK {args.verify}")
        return 1 if problems else 0
    try:
        warnings.simplefilter("ignore", export_lib.ParityWarning)  # printed below, from the manifest
        version_dir = export_lib.export_run(args.source, args.name, export_dir=args.export_dir, version=args.version,
                                            tflite=args.tflite, tflite_signatures=args.tflite_signatures,
                                            representative_data=args.representative_data,
                                            overwrite=args.overwrite, strict_parity=args.strict_parity,
                                            keras_model=args.keras_model, onnx=args.onnx)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # bad input: a usage error
        parser.error(" ".join(str(err).split()))
    except export_lib.ExportError as err:
        print(f"{parser.prog}: export failed: {err}", file=sys.stderr)
        return 1
    print_export(version_dir)
    return 0


def _size(num_bytes):
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 1024:.1f} KiB"


def print_export(version_dir):
    """What an export wrote, for people: the SavedModel, then each TFLite file's size and parity per output."""
    from kerasae import export as export_lib

    manifest = json.loads((version_dir / "assets.extra" / export_lib.MANIFEST).read_text())
    saved = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
    print(f"SavedModel  {version_dir}  {_size(saved)}  (signatures: "
          f"{', '.join(s for s in manifest['signatures'] if s != 'serving_default')})")
    tflite = manifest["tflite"] or {"files": {}, "skipped": {}}
    if tflite["files"]:
        print(f"TFLite      {version_dir.parent / 'tflite'}  (difference from the SavedModel on "
              f"{tflite.get('parity_data', 'the parity images')})")
    for file_name, entry in sorted(tflite["files"].items()):
        metric = export_lib.PARITY_TOLERANCES[entry["variant"]][0]
        diffs = ", ".join(f"{k} {d[metric]:.2g}" for k, d in sorted(entry["parity"].items()))
        flag = "" if entry.get("within_tolerance", True) else "  OUTSIDE ITS BOUND"
        print(f"  {file_name:26s} {_size(entry['bytes']):>10s}  {metric}: {diffs}{flag}")
    for file_name, reason in sorted(tflite["skipped"].items()):
        print(f"  skipped {file_name}: {reason}")
    for file_name, reason in sorted(tflite.get("out_of_tolerance", {}).items()):
        print(f"  WARNING {file_name} is outside its parity bound: {reason} (kept; flagged in the manifest)")
    onnx = manifest.get("onnx") or {"files": {}, "skipped": {}}
    if onnx["files"] or onnx["skipped"]:
        _print_onnx(version_dir.parent / "onnx", onnx)
    total = saved + sum(e["bytes"] for e in tflite["files"].values()) + sum(e["bytes"] for e in onnx["files"].values())
    print(f"the SavedModel, {len(tflite['files'])} TFLite files" + (f" and {len(onnx['files'])} ONNX files"
          if onnx["files"] else "") + f", {_size(total)} in all (`--tflite all --tflite-signatures all`: every "
          "TFLite variant of every signature)")


def _print_onnx(folder, onnx):
    print(f"ONNX        {folder}  (max_diff from the SavedModel)")
    for file_name, entry in sorted(onnx["files"].items()):
        diffs = ", ".join(f"{k} {d['max_diff']:.2g}" for k, d in sorted(entry["parity"].items()))
        print(f"  {file_name:26s} {_size(entry['bytes']):>10s}  max_diff: {diffs}")
    for file_name, reason in sorted(onnx["skipped"].items()):
        print(f"  skipped {file_name}: {reason}")
    for file_name, reason in sorted(onnx.get("out_of_tolerance", {}).items()):
        print(f"  WARNING {file_name} is outside its parity bound: {reason} (kept; flagged in the manifest)")


if __name__ == "__main__":  # python -m kerasae.cli.export: the same as `kerasae export`
    from kerasae.cli.main import run_module

    run_module(export_main, "python -m kerasae.cli.export")

"""fp16 TFLite parity on trained runs: nearest float16 rounding vs kerasae's plan (kerasae.fp16).

    python benchmarks/fp16_parity.py runs/reproduce/full/vae-nll runs/reproduce/full/ae-mlp-seed ...

Exports each run through the real path (`kerasae.export.export_run`, fp32 + fp16, reconstruct and
decode), and converts the same SavedModel to fp16 with plain nearest rounding; both are compared
with the SavedModel in LiteRT on the parity images export_run uses (the first 256 test images,
binarized as tested for Bernoulli models). The contract's bound is max abs diff <= 1e-3 on the
images (`reconstruction`, `x_mean`). Writes benchmarks/results/fp16_parity.json.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _common

SIGNATURES = ("reconstruct", "decode")
IMAGE_OUTPUT = {"reconstruct": "reconstruction", "decode": "x_mean"}


def measure(run_dir, export_lib, data_lib, train_lib):
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        version_dir = export_lib.export_run(run_dir, "m", export_dir=tmp, tflite=("fp32", "fp16"),
                                            tflite_signatures=SIGNATURES)
        export_s = time.perf_counter() - start
        manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
        model_binary = manifest["input_spec"]["x"]["binary_pixels"]
        x = data_lib.load_mnist().x_test[:export_lib.NUM_PARITY_IMAGES]
        if model_binary:
            x = data_lib.binarize(x, seed=train_lib.TEST_BINARIZATION_SEED)
        out = {"export_time_s": round(export_s, 1), "signatures": {}}
        for signature in SIGNATURES:
            nearest = Path(tmp) / f"{signature}.nearest.tflite"
            nearest.write_bytes(export_lib.convert_tflite(version_dir, signature, "fp16"))
            key = IMAGE_OUTPUT[signature]
            files = manifest["tflite"]["files"]
            planned, fp32 = files[f"{signature}.fp16.tflite"], files[f"{signature}.fp32.tflite"]
            plain = export_lib.check_parity(version_dir, [nearest], x)[nearest.name][key]
            out["signatures"][signature] = {
                "output": key,
                "nearest": {"max_abs_diff": plain["max_abs_diff"], "mean_abs_diff": plain["mean_abs_diff"],
                            "size_vs_fp32": round(nearest.stat().st_size / fp32["bytes"], 4)},
                "kerasae": {"max_abs_diff": planned["parity"][key]["max_abs_diff"],
                            "mean_abs_diff": planned["parity"][key]["mean_abs_diff"],
                            "size_vs_fp32": planned["size_vs_fp32"],
                            "float32_weights": planned["float32_weights"],
                            "within_tolerance": planned["within_tolerance"]},
                "fp32_max_abs_diff": fp32["parity"][key]["max_abs_diff"],
            }
        return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories (model.keras inside)")
    args = _common.parse_args(parser, argv, lambda a: {}, "fp16_parity.json")
    for run in args.runs:
        if not (run / "model.keras").is_file():
            parser.error(f"{run}: not a finished run directory (no model.keras)")
    _common.setup_imports()
    from kerasae import data as data_lib
    from kerasae import export as export_lib
    from kerasae import training as train_lib

    result = {**_common.header("fp16_parity", args, quick=False), "bound": export_lib.PARITY_TOLERANCES["fp16"][1],
              "runs": {}}
    for run in args.runs:
        result["runs"][run.name] = measure(run, export_lib, data_lib, train_lib)
        for signature, r in result["runs"][run.name]["signatures"].items():
            print(f"{run.name:12s} {signature:11s} nearest {r['nearest']['max_abs_diff']:.2e} "
                  f"(size {r['nearest']['size_vs_fp32']:.2f})  kerasae {r['kerasae']['max_abs_diff']:.2e} "
                  f"(size {r['kerasae']['size_vs_fp32']:.2f}, float32: "
                  f"{', '.join(r['kerasae']['float32_weights']['layers'])})")
    _common.write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

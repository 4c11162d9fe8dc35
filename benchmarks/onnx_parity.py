"""ONNX files of the pretrained zoo: tf2onnx conversion time and onnxruntime parity with the SavedModel.

    python benchmarks/onnx_parity.py                      # the zoo's iwae_mlp_50d_mnist and vae_resnet_32d_mnist
    python benchmarks/onnx_parity.py iwae_mlp_50d_mnist hvae_vamp_mlp_mnist --slices 4

Converts every signature of each zoo entry's SavedModel as export does (`kerasae.export.convert_onnx`),
then compares each file in onnxruntime with the SavedModel (`check_parity`, max_diff as in the manifest)
on `--slices` disjoint sets of 256 MNIST test images (binarized as tested for Bernoulli models): the
spread behind ONNX_TOLERANCE. Needs the onnx extra. Writes benchmarks/results/onnx_parity.json.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _common


def measure(entry, slices, export_lib, data_lib, zoo):
    pretrained = zoo.load_pretrained(entry)
    version_dir, manifest = pretrained.path, pretrained.manifest
    x = data_lib.load_mnist().x_test[:slices * export_lib.NUM_PARITY_IMAGES]
    if manifest["input_spec"]["x"]["binary_pixels"]:
        x = data_lib.binarize(x, seed=data_lib.TEST_BINARIZATION_SEED)
    out = {"version_dir": str(version_dir), "signatures": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for signature in export_lib.SIGNATURES:
            start = time.perf_counter()
            model_bytes = export_lib.convert_onnx(version_dir, signature)
            seconds = time.perf_counter() - start
            path = Path(tmp) / f"{signature}.onnx"
            path.write_bytes(model_bytes)
            diffs = []
            for i in range(slices):
                images = x[i * export_lib.NUM_PARITY_IMAGES:(i + 1) * export_lib.NUM_PARITY_IMAGES]
                parity = export_lib.check_parity(version_dir, [path], images,
                                                 run=lambda p, s, **feed: export_lib.run_onnx(p, **feed))[path.name]
                diffs.append({k: d["max_diff"] for k, d in parity.items()})
            out["signatures"][signature] = {
                "convert_s": round(seconds, 2), "bytes": len(model_bytes),
                "max_diff_per_slice": diffs,
                "max_diff": {k: max(d[k] for d in diffs) for k in diffs[0]}}
            _common.log(f"{entry:14s} {signature:11s} {seconds:5.1f} s  {len(model_bytes) / 2**20:5.2f} MiB  max_diff "
                        + ", ".join(f"{k} {v:.2e}" for k, v in out["signatures"][signature]["max_diff"].items()))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="*", default=["iwae_mlp_50d_mnist", "vae_resnet_32d_mnist"], help="zoo entry names")
    parser.add_argument("--slices", type=_common.positive_int, default=4,
                        help="disjoint sets of 256 test images to measure parity on (default: 4)")
    args = _common.parse_args(parser, argv, lambda a: {}, "onnx_parity.json")
    _common.setup_imports()
    from kerasae import data as data_lib
    from kerasae import export as export_lib
    from kerasae import zoo
    from kerasae.export.onnx import converter_versions, missing_modules

    if missing_modules():
        parser.error(f"needs {' and '.join(missing_modules())}: pip install \".[onnx]\"")
    unknown = [e for e in args.entries if e not in zoo.available()]
    if unknown:
        parser.error(f"not in the zoo: {', '.join(unknown)} (available: {', '.join(zoo.available())})")
    result = {**_common.header("onnx_parity", args, quick=False), "converter": converter_versions(),
              "bound": export_lib.ONNX_TOLERANCE, "entries": {}}
    for entry in args.entries:
        result["entries"][entry] = measure(entry, args.slices, export_lib, data_lib, zoo)
    _common.write_result(args.out, result)
    print("\n".join(_common.report_header(result, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

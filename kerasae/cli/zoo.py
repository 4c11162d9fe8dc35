"""`kerasae zoo`: a table of the pretrained models; `kerasae zoo show NAME`: one entry's manifest facts."""

import argparse
import json
from pathlib import Path

from kerasae.cli import startup


def build_zoo_parser(prog="kerasae zoo"):
    p = argparse.ArgumentParser(prog=prog, description="List the pretrained models (name, family, data, weights, "
                                "size on disk, headline test metric), or show one entry's manifest facts.")
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="(default: list)")
    p.add_argument("name", nargs="?", metavar="NAME", help="the entry `show` describes")
    p.add_argument("--zoo-dir", metavar="DIR", help="another zoo (default: $KERASAE_ZOO, else the installed zoo)")
    return p


def zoo_main(argv=None, prog="kerasae zoo"):
    parser = build_zoo_parser(prog)
    args = parser.parse_args(argv)
    if (args.action == "show") != (args.name is not None):
        parser.error("`show` takes one NAME" if args.action == "show" else "NAME goes with `show`")
    if args.zoo_dir is not None and not Path(args.zoo_dir).is_dir():
        parser.error(f"--zoo-dir: {args.zoo_dir} is not a directory")
    startup.start_tensorflow()
    from kerasae import zoo

    zoo_dir = Path(args.zoo_dir) if args.zoo_dir else zoo.default_zoo_dir()
    from kerasae.codec.api import zoo_codecs

    codecs = zoo_codecs(zoo_dir)
    if args.action == "list":
        rows = [entry_facts(zoo.version_dir(name, zoo_dir)) for name in zoo.available(zoo_dir)]
        rows += [codec_facts(zoo_dir / name) for name in codecs]
        print(format_table(rows) if rows else f"no pretrained models in {zoo_dir}")
        print(f"({zoo_dir}; `{prog} show NAME` for one entry, kerasae.load_pretrained(NAME) to load it)")
        return 0
    if args.name in codecs:
        for key, value in codec_facts(zoo_dir / args.name).items():
            print(f"{key + ':':12s} {value}")
        print(f"{'use:':12s} kerasae compress IN OUT --model {args.name}; kerasae.codec.load_coder({args.name!r})")
        return 0
    try:
        path = zoo.version_dir(args.name, zoo_dir)
    except ValueError as err:
        parser.error(" ".join(str(err).split()))
    facts = entry_facts(path)
    manifest = facts.pop("manifest")
    for key, value in facts.items():
        print(f"{key + ':':12s} {value}")
    print(f"{'signatures:':12s} {', '.join(manifest['signatures'])}")
    tflite = (manifest.get("tflite") or {}).get("files", {})
    for file_name, entry in sorted(tflite.items()):
        print(f"{'':12s} tflite/{file_name} ({_mib(entry['bytes'])})")
    test = (manifest.get("metrics") or {}).get("test") or {}
    scalars = {k: v for k, v in test.items() if isinstance(v, (int, float))}
    if scalars:
        print("test metrics: " + ", ".join(f"{k} {v if isinstance(v, int) else format(v, '.4g')}"
                                           for k, v in sorted(scalars.items())))
    print(f"{'source:':12s} {manifest.get('source')}")
    return 0


def _mib(num_bytes):
    return f"{num_bytes / 2**20:.1f} MiB"


def headline_metric(test):
    """The one number a zoo entry is chosen by, with its unit: NLL (VAEs) or reconstruction error (the others)."""
    if "nll" in test:
        return f"NLL {test['nll']:.2f} nats" + (f" (k={test['k']})" if "k" in test else "")
    if "mse_per_pixel" in test:
        return f"MSE {test['mse_per_pixel']:.4f}/pixel" + (f", PSNR {test['psnr_db']:.1f} dB" if "psnr_db" in test
                                                           else "")
    return "-"


def entry_facts(version_dir):
    """What `kerasae zoo` shows of one entry, from its manifest, its files and its SavedModel's variables."""
    import numpy as np
    import tensorflow as tf

    from kerasae import export as export_lib

    version_dir = Path(version_dir)
    manifest = json.loads((version_dir / "assets.extra" / export_lib.MANIFEST).read_text())
    variables = tf.train.list_variables(str(version_dir / "variables" / "variables"))
    weights = sum(int(np.prod(shape)) for name, shape in variables if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    x = manifest["input_spec"]["x"]
    data = (manifest.get("card") or {}).get("data")  # what a zoo entry's card says it was trained on
    if not data:
        data = "x".join(str(d) for d in x["shape"][1:]) + (", binarized" if x.get("binary_pixels") else "")
    on_disk = sum(f.stat().st_size for d in (version_dir, version_dir.parent / "tflite") if d.is_dir()
                  for f in d.rglob("*") if f.is_file())
    return {"name": manifest["name"], "family": manifest["model"]["family"], "class": manifest["model"]["class"],
            "data": data, "weights": f"{weights:,}", "size": _mib(on_disk), "latent_dim": manifest["latent_dim"],
            "metric": headline_metric((manifest.get("metrics") or {}).get("test") or {}),
            "version": manifest["version"], "path": str(version_dir), "manifest": manifest}


def codec_facts(folder):
    """What `kerasae zoo` shows of a codec entry (a folder Coder.save wrote), from its codec.json and files."""
    info = json.loads((Path(folder) / "codec.json").read_text())
    metric = info.get("metric") or "-"  # the ladder's evidence, written beside the entry when it is measured
    on_disk = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    return {"name": info["name"], "family": "codec", "class": info["class"], "data": "photographs",
            "weights": f"{info.get('parameters', 0):,}" + (" fp16" if info.get("weights") == "float16" else ""),
            "size": _mib(on_disk), "metric": metric, "version": info["version"], "path": str(folder)}


def format_table(rows):
    columns = ("name", "family", "data", "weights", "size", "metric")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r[c]).rjust(widths[c]) if c in ("weights", "size") else str(r[c]).ljust(widths[c])
                        for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m kerasae.cli.zoo: the same as `kerasae zoo`
    from kerasae.cli.main import run_module

    run_module(zoo_main, "python -m kerasae.cli.zoo")

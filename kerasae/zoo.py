"""The pretrained zoo in `exported/`: exported by `scripts/reproduce.py --export-zoo`, loaded by `load_pretrained`.

Each entry is a SavedModel version directory (every signature; see exported/README.md)
plus its fp32 and int8 TFLite decode models, with the metrics reproduce measured in its
manifest. Nothing is loaded before every file's sha256 matches the manifest.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

from kerasae import _backend  # noqa: F401
import tensorflow as tf

from kerasae import export as export_lib
from kerasae.files import atomic_path

#: zoo name -> (results file, where its metrics are, lower-is-better metric that decides an update)
ZOO = {
    "ae-mlp-seed": ("seed_claims.json", "ae-mlp-seed", "mse_per_pixel"),
    "dae-mlp": ("seed_claims.json", "dae-mlp", "mse_per_pixel"),
    "vae-mlp-2d": ("seed_claims.json", "vae-mlp-2d", "nll"),
    "vae-mlp": ("nll.json", None, "nll"),  # the best VAE of the likelihood runs
}
ZOO_TFLITE = dict(tflite=("fp32", "int8"), tflite_signatures=("decode",))
MAX_ZOO_BYTES = 40 * 2**20


def default_zoo_dir():
    """$KERASAE_ZOO, else ./exported, else the exported/ folder of the source checkout kerasae runs from."""
    if os.environ.get("KERASAE_ZOO"):
        return Path(os.environ["KERASAE_ZOO"])
    for candidate in (Path("exported"), Path(__file__).resolve().parents[1] / "exported"):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return Path("exported")


# ---- loading -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pretrained:
    """A verified zoo model: its signatures as methods (`model.decode(z=...)`), its manifest and path."""

    name: str
    path: Path
    manifest: dict
    saved_model: object

    @property
    def signatures(self):
        return self.saved_model.signatures

    @property
    def metrics(self):
        return self.manifest.get("metrics")

    def __getattr__(self, signature):
        if signature.startswith("_") or signature not in self.saved_model.signatures:
            raise AttributeError(signature)
        return self.saved_model.signatures[signature]


def load_pretrained(name, zoo_dir=None, version=None):
    """Verify exported/<name> against its manifest (sha256 of every file), then load its SavedModel.

    Raises ValueError for an unknown name and export.VerificationError, listing every bad
    file, when anything changed since export; nothing is loaded in that case.
    """
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
    root = zoo_dir / name
    versions = export_lib.existing_versions(root) if root.is_dir() else []
    if not versions:
        available = sorted(p.name for p in zoo_dir.iterdir() if export_lib.existing_versions(p)) \
            if zoo_dir.is_dir() else []
        raise ValueError(f"no pretrained model {name!r} in {zoo_dir}; available: {', '.join(available) or 'none'}")
    if version is not None and version not in versions:
        raise ValueError(f"{name} has no version {version!r}; available: {versions}")
    version_dir = root / str(version or max(versions))
    export_lib.verify(version_dir, deep=False, strict=True)
    manifest = json.loads((version_dir / "assets.extra" / export_lib.MANIFEST).read_text())
    return Pretrained(name, version_dir, manifest, tf.saved_model.load(str(version_dir)))


# ---- exporting -------------------------------------------------------------------------------------

def zoo_metrics(name, results_dir):
    """(run directory, metrics dict, deciding metric value) of zoo entry `name` from reproduce's results."""
    file_name, key, metric = ZOO[name]
    results = json.loads((Path(results_dir) / file_name).read_text())
    if file_name == "nll.json":
        key = min(results["runs"], key=lambda run: results["runs"][run]["test"]["nll"])
        entry = results["runs"][key]
        metrics = {"source_run": key, "test": {k: v for k, v in entry["test"].items()
                                               if not isinstance(v, list)}, "protocol": results["protocol"]}
        return entry["run_dir"], metrics, entry["test"]["nll"]
    run = results["runs"][key]
    if key in results.get("vae", {}):
        test = {k: v for k, v in results["vae"][key].items() if not isinstance(v, list)}
    else:
        test = next(row["ae"] for row in results["ae_vs_pca"] if row["model"] == key)
    metrics = {"source_run": key, "test": test}
    if key in results.get("denoising", {}):
        metrics["denoising"] = results["denoising"][key]
    return run["run_dir"], metrics, test[metric]


def _latest_manifest(root):
    """The manifest of the newest version under exported/<name>, or None when there is none."""
    versions = export_lib.existing_versions(root)
    if not versions:
        return None
    return json.loads((Path(root) / str(max(versions)) / "assets.extra" / export_lib.MANIFEST).read_text())


def _current_metric(root, metric):
    manifest = _latest_manifest(root)
    return None if manifest is None else ((manifest.get("metrics") or {}).get("test") or {}).get(metric)


def export_zoo(results_dir="benchmarks/results", zoo_dir="exported", force=False):
    """Export every ZOO entry whose deciding metric beats the one already in zoo_dir (or all, with force).

    A new export becomes the next version; older versions are removed once it is in place.
    Returns {name: version directory or the reason it was kept}.
    """
    zoo_dir = Path(zoo_dir)
    done = {}
    for name, (_, _, metric) in ZOO.items():
        run_dir, metrics, value = zoo_metrics(name, results_dir)
        root = zoo_dir / name
        current = _current_metric(root, metric)
        if not force and current is not None and current <= value:
            done[name] = f"kept (its {metric} {current:.4g} <= the new {value:.4g})"
            continue
        model_path = Path(run_dir) / "best.keras"
        version_dir = export_lib.export_run(model_path, name, export_dir=zoo_dir, metrics=metrics, **ZOO_TFLITE)
        for old in export_lib.existing_versions(root):
            if str(old) != version_dir.name:
                shutil.rmtree(root / str(old))
        done[name] = version_dir
    readme = zoo_dir / "README.md"
    if readme.is_file():
        update_readme_table(readme, zoo_table(zoo_dir))
    total = sum(f.stat().st_size for f in zoo_dir.rglob("*") if f.is_file())
    if total > MAX_ZOO_BYTES:
        raise ValueError(f"the zoo in {zoo_dir} takes {total / 2**20:.1f} MiB, over the {MAX_ZOO_BYTES / 2**20:.0f} "
                         "MiB budget")
    return done


# ---- the table in exported/README.md ---------------------------------------------------------------

TABLE_BEGIN, TABLE_END = "<!-- zoo-table: begin (written by scripts/reproduce.py --export-zoo) -->", \
    "<!-- zoo-table: end -->"


def _size(files):
    return sum(entry["bytes"] for entry in files.values())


def zoo_table(zoo_dir):
    """Markdown: one row per zoo model with its measured test metrics and file sizes (from the manifests)."""
    rows = ["| model | class, latent | test metrics (see notes) | SavedModel | decode TFLite fp32 / int8 | version |",
            "|---|---|---|---|---|---|"]
    for name in ZOO:
        manifest = _latest_manifest(Path(zoo_dir) / name)
        if manifest is None:
            continue
        test = (manifest.get("metrics") or {}).get("test") or {}
        if "nll" in test:
            metric = (f"NLL {test['nll']:.2f} nats (k={test['k']}), ELBO {test['elbo']:.2f}, "
                      f"{test['active_units']} active units")
        else:
            metric = f"MSE {test['mse_per_pixel']:.4f}/pixel, PSNR {test['psnr_db']:.2f} dB"
        for row in (manifest.get("metrics") or {}).get("denoising", []):
            if (row["noise"], row["level"]) == ("gaussian", 0.5):
                metric += f"; gaussian 0.5: {row['psnr_noisy_db']:.1f} -> {row['psnr_denoised_db']:.1f} dB"
        tflite = (manifest.get("tflite") or {}).get("files", {})
        sizes = " / ".join(f"{tflite[f]['bytes'] / 2**20:.2f} MiB" for f in ("decode.fp32.tflite", "decode.int8.tflite")
                           if f in tflite)
        model = manifest["model"]
        rows.append(f"| `{name}` | {model['class']}, {manifest['latent_dim']} | {metric} | "
                    f"{_size(manifest['files']['saved_model']) / 2**20:.1f} MiB | {sizes or '-'} | "
                    f"{manifest['version']} |")
    return "\n".join(rows)


def update_readme_table(readme, table):
    """Replace what lies between the zoo-table markers of `readme` with `table` (atomically)."""
    text = Path(readme).read_text()
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no zoo-table markers ({TABLE_BEGIN} ... {TABLE_END})")
    text = text[:start + len(TABLE_BEGIN)] + "\n" + table + "\n" + text[end:]
    with atomic_path(readme) as tmp:
        Path(tmp).write_text(text)

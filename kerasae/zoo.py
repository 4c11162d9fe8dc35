"""The pretrained zoo: exported by `scripts/reproduce.py --export-zoo`, loaded by `load_pretrained`.

Each entry is a SavedModel version directory (every signature; see exported/README.md)
whose manifest and variables rebuild the kerasae Keras model (`Pretrained.keras_model()`; no
second copy of the weights in model.keras), plus its fp32 and int8 TFLite decode models, with
the metrics reproduce measured in its manifest. Nothing is loaded before every file's sha256
matches the manifest. The zoo lives in the checkout's
exported/ folder and ships inside the package as `kerasae/pretrained`, so it loads from
any directory after `pip install .`.
"""

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

from kerasae import _backend  # noqa: F401
import tensorflow as tf

from kerasae import export as export_lib
from kerasae.config import ZOO_PREFIX
from kerasae import files
from kerasae.files import atomic_path, json_text, write_json
from kerasae.options import check_positive_int, did_you_mean
from kerasae.zoo_entries import MAX_ZOO_BYTES, ZOO, ZOO_DATASET, ZOO_EXPORT, ZooEntry  # noqa: F401  (re-exported)


def default_zoo_dir():
    """$KERASAE_ZOO, else the zoo installed with the package, else the checkout's exported/ (source runs)."""
    if os.environ.get("KERASAE_ZOO"):
        return Path(os.environ["KERASAE_ZOO"])
    package = Path(__file__).resolve().parent
    for candidate in (package / "pretrained", package.parent / "exported"):
        if candidate.is_dir() and available(candidate):
            return candidate
    return package / "pretrained"


def available(zoo_dir=None):
    """Names of the models in the zoo (default: `default_zoo_dir()`)."""
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
    if not zoo_dir.is_dir():
        return []
    return sorted(p.name for p in zoo_dir.iterdir() if export_lib.existing_versions(p))


# ---- loading -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pretrained:
    """A verified zoo model for serving: the SavedModel's signatures behind the method names and return types of
    the kerasae Keras model (`encode`, `decode`, `reconstruct`, `score`, `sample`), its manifest and path.

    `keras_model()` gives the trainable kerasae model itself (to fine-tune it, or for `posterior`,
    `importance_weighted_bound`, ...); `signatures[NAME](**inputs)` the raw signatures (dicts of tensors).
    """

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

    @property
    def card(self):
        """What the model is: preset and changes, dataset, pixels, objective, parameters and headline metric."""
        return self.manifest.get("card")

    def keras_model(self):
        """The kerasae Keras model of this entry: the files sha256-verified, then rebuilt from the manifest and
        the SavedModel's variables (or loaded from an older entry's model.keras in Keras safe mode)."""
        return export_lib.load_keras_model(self.path)

    def _call(self, signature, **inputs):
        return self.saved_model.signatures[signature](**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})

    def encode(self, x):
        """Images [B, H, W, C] in [0, 1] -> the code z (AE; a VQ-VAE's int32 indices) or (z_mean, z_log_var) (VAE),
        as the Keras model."""
        out = self._call("encode", x=tf.cast(x, tf.float32))
        return (out["z_mean"], out["z_log_var"]) if "z_mean" in out else out["z"]

    def decode(self, z):
        """Codes [B, latent_dim] (a VQ-VAE's: integer codebook indices) -> mean images [B, H, W, C] in [0, 1]."""
        dtype = self.saved_model.signatures["decode"].structured_input_signature[1]["z"].dtype
        z = tf.convert_to_tensor(z)
        if dtype.is_integer and not z.dtype.is_integer:  # a cast would truncate: a silent wrong image
            raise TypeError(f"z must be integer code indices (as encode gives), got dtype {z.dtype.name}")
        return self._call("decode", z=tf.cast(z, dtype))["x_mean"]

    def reconstruct(self, x):
        return self._call("reconstruct", x=tf.cast(x, tf.float32))["reconstruction"]

    def score(self, x):
        """Per-example anomaly score [B] (see the manifest's "score" for its definition)."""
        return self._call("score", x=tf.cast(x, tf.float32))["score"]

    def sample(self, n, seed=None):
        """n images decoded from prior draws. The SavedModel draws its own random numbers: `seed` must be None
        (seeded draws: `keras_model().sample(n, seed=...)`)."""
        if seed is not None:
            raise ValueError("seed: a SavedModel's sample signature draws unseeded; use keras_model().sample(n, "
                             "seed=...) for reproducible draws")
        return self._call("sample", num_samples=tf.constant(int(check_positive_int("n", n)), tf.int32))["x_mean"]


def version_dir(name, zoo_dir=None, version=None):
    """The version directory of zoo entry `name` (newest by default); ValueError naming what exists."""
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
    root = zoo_dir / name
    versions = export_lib.existing_versions(root) if root.is_dir() else []
    if not versions:
        names = available(zoo_dir)
        hint = ""
        from kerasae import registry

        if name in registry.PRESETS:
            hint = (f" ({name!r} is a preset: kerasae.build({name!r}) makes an untrained model; `kerasae zoo` lists "
                    "what each pretrained model is)")
        raise ValueError(f"no pretrained model {name!r}{did_you_mean(name, names)}{hint} in {zoo_dir}; available: "
                         f"{', '.join(names) or 'none'}. "
                         "The zoo ships with kerasae (pip install .); point zoo_dir or $KERASAE_ZOO at another "
                         "zoo, or build one with `python scripts/reproduce.py --export-zoo`")
    if version is not None and version not in versions:
        raise ValueError(f"{name} has no version {version!r}; available: {versions}")
    return root / str(version or max(versions))


def load_pretrained(name, zoo_dir=None, version=None):
    """Verify zoo entry `name` against its manifest (sha256 of every file), then load its SavedModel.

    Raises ValueError for an unknown name (listing the available ones) and
    export.VerificationError, listing every bad file, when anything changed since export;
    nothing is loaded in that case.
    """
    path = version_dir(name, zoo_dir, version)
    export_lib.verify(path, deep=False, strict=True)
    manifest = json.loads((path / "assets.extra" / export_lib.MANIFEST).read_text())
    return Pretrained(name, path, manifest, tf.saved_model.load(str(path)))


def parse_spec(spec):
    """"zoo:NAME" or "zoo:NAME/VERSION" -> (name, version or None)."""
    name, _, version = str(spec)[len(ZOO_PREFIX):].partition("/")
    if not str(spec).startswith(ZOO_PREFIX) or not name or (version and not version.isdigit()):
        raise ValueError(f"init_from: {spec!r} must be {ZOO_PREFIX}NAME or {ZOO_PREFIX}NAME/VERSION")
    return name, int(version) if version else None


def image_shape(spec):
    """The image shape (H, W, C) the model of "zoo:NAME[/VERSION]" takes, from its manifest (unverified)."""
    return tuple(export_lib.model_record(version_dir(*parse_spec(spec)))["config"]["image_shape"])


def load_keras_model(spec):
    """The verified Keras model of "zoo:NAME[/VERSION]": what `init_from` / `--init-from` take."""
    name, version = parse_spec(spec)
    return export_lib.load_keras_model(version_dir(name, version=version))


def from_preset(name, zoo_dir=None, version=None):
    """The trainable kerasae Keras model of pretrained zoo model `name` (keras-hub's `from_preset`), verified.

    `load_pretrained(name)` gives the same model's serving signatures, with the same method names.
    """
    return export_lib.load_keras_model(version_dir(name, zoo_dir, version))


# ---- exporting -------------------------------------------------------------------------------------

def zoo_metrics(name, results_dir):
    """(run directory, metrics dict, deciding metric value) of zoo entry `name` from reproduce's results."""
    file_name, key, metric = ZOO[name][:3]
    results = json.loads((Path(results_dir) / file_name).read_text())
    if file_name.startswith("nll"):  # the best run of a likelihood stage
        key = min(results["runs"], key=lambda run: results["runs"][run]["test"]["nll"])
        entry = results["runs"][key]
        metrics = {"source_run": key, "test": {k: v for k, v in entry["test"].items()
                                               if not isinstance(v, list)}, "protocol": results["protocol"]}
        return entry["run_dir"], metrics, entry["test"]["nll"]
    run = results["runs"][key]
    if "rows" in results:  # the VQ stage: the run's row of the rate-distortion table
        row = next(r for r in results["rows"] if r["method"] == f"{key} (VQ codes)")
        test = {**{k: v for k, v in row.items() if k != "method"}, "num_images": results["conventions"]["num_test"]}
        return run["run_dir"], {"source_run": key, "test": test}, test[metric]
    if key in results.get("vae", {}):
        test = {k: v for k, v in results["vae"][key].items() if not isinstance(v, list)}
    else:
        test = next(row["ae"] for row in results["ae_vs_pca"] if row["model"] == key)
    metrics = {"source_run": key, "test": test}
    if key in results.get("denoising", {}):
        metrics["denoising"] = results["denoising"][key]
    return run["run_dir"], metrics, test[metric]


def _zoo_command(function):
    """The zoo's own commands write into the zoo's folder, which `export_model` refuses to anyone else."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with files.zoo_writes():
            return function(*args, **kwargs)

    return wrapper


@_zoo_command
def reexport(zoo_dir="exported"):
    """Re-export, as its next version, each zoo entry that `export_zoo` would not store as it is (one that holds
    assets.extra/model.keras, a second copy of its weights): from its own verified Keras model, metrics kept.

    Returns {name: new version directory}; entries already stored as the zoo stores them are left alone.
    """
    import tempfile

    zoo_dir, done = Path(zoo_dir), {}
    for name in available(zoo_dir):
        old = version_dir(name, zoo_dir)
        manifest = json.loads((old / "assets.extra" / export_lib.MANIFEST).read_text())
        if export_lib.KERAS_MODEL not in manifest["files"]["saved_model"]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / "model.keras"
            export_lib.load_keras_model(old).save(model_path)
            done[name] = export_lib.export_run(model_path, name, export_dir=zoo_dir, metrics=manifest["metrics"],
                                               source=f"{manifest['source']} (re-exported from {name} version "
                                                      f"{manifest['version']})", **ZOO_EXPORT)
        if name in ZOO:
            write_card(name, done[name])
        shutil.rmtree(old)
    _refresh_readme(zoo_dir)
    return done


def _latest_manifest(root):
    """The manifest of the newest version under the zoo's <name>/, or None when there is none."""
    versions = export_lib.existing_versions(root)
    if not versions:
        return None
    return json.loads((Path(root) / str(max(versions)) / "assets.extra" / export_lib.MANIFEST).read_text())


def _current_metric(root, metric):
    manifest = _latest_manifest(root)
    return None if manifest is None else ((manifest.get("metrics") or {}).get("test") or {}).get(metric)


@_zoo_command
def export_zoo(results_dir="benchmarks/results", zoo_dir="exported", force=False):
    """Export every ZOO entry whose deciding metric beats the one already in zoo_dir (or all, with force).

    A new export becomes the next version; older versions are removed once it is in place.
    Returns {name: version directory or the reason it was kept}.
    """
    zoo_dir = Path(zoo_dir)
    done = {}
    for name, entry in ZOO.items():
        metric = entry.metric
        run_dir, metrics, value = zoo_metrics(name, results_dir)
        root = zoo_dir / name
        current = _current_metric(root, metric)
        if not force and current is not None and (current >= value if entry.higher_is_better else current <= value):
            done[name] = f"kept (its {metric} {current:.4g} {'>=' if entry.higher_is_better else '<='} the new " \
                         f"{value:.4g})"
            continue
        model_path = Path(run_dir) / "best.keras"
        new_dir = export_lib.export_run(model_path, name, export_dir=zoo_dir, metrics=metrics, **ZOO_EXPORT)
        write_card(name, new_dir)
        for old in export_lib.existing_versions(root):
            if str(old) != new_dir.name:
                shutil.rmtree(root / str(old))
        done[name] = new_dir
    _refresh_readme(zoo_dir)
    total = sum(f.stat().st_size for f in zoo_dir.rglob("*") if f.is_file())
    if total > MAX_ZOO_BYTES:
        raise ValueError(f"the zoo in {zoo_dir} takes {total / 2**20:.1f} MiB, over the {MAX_ZOO_BYTES / 2**20:.0f} "
                         "MiB budget")
    return done


# ---- model cards: what each entry is, in its manifest ----------------------------------------------



def model_card(name, version_dir):
    """The card of zoo entry `name` at `version_dir`: computed from its manifest, its rebuilt model and ZOO."""
    from kerasae import data as data_lib
    from kerasae import registry

    entry = ZOO[name]
    manifest = json.loads((Path(version_dir) / "assets.extra" / export_lib.MANIFEST).read_text())
    model = export_lib.rebuild_keras_model(version_dir)
    config = json.loads(json_text(model.get_config()))
    preset = json.loads(json_text(registry.build(entry.preset, image_shape=tuple(config["image_shape"])).get_config()))
    binary = bool(getattr(model, "binary_data", False))
    seed = ((manifest.get("metrics") or {}).get("protocol") or {}).get("test_binarization_seed",
                                                                        data_lib.TEST_BINARIZATION_SEED)
    card = {"summary": entry.summary, "class": type(model).__name__, "preset": entry.preset,
            "changes_from_preset": {k: v for k, v in config.items()
                                    if k not in ("name", "trainable", "dtype", "seed") and preset.get(k) != v},
            "parameters": int(model.count_params()), "data": "MNIST" + (", binarized" if binary else ""),
            "dataset": ZOO_DATASET,
            "pixels": (f"binarized: a fresh Bernoulli draw per training batch; the test images binarized once "
                       f"(seed {seed})" if binary else "grey levels in [0, 1]"),
            "objective": _objective(model),
            "headline": _headline(manifest.get("metrics") or {}, binary, seed)}
    return card


def _objective(model):
    """The run record's objective (`training.recipe.objective`, as config.json holds it), with its one-line
    description and what it leaves out: a VAE's prior, a DAE's corruption."""
    from kerasae.training import recipe

    record = recipe.objective(model)
    objective = {**record, "loss": recipe.describe_objective(record).removeprefix("objective: ")}
    if "bound" in record:
        objective["prior"] = model.prior_type
    if getattr(model, "noise_type", None):
        objective["noise"] = f"{model.noise_type} {model.noise_level:g} on the inputs"
    return objective


def _headline(metrics, binary, seed):
    """The metric a reader compares this model by, with how it was measured."""
    test = metrics.get("test") or {}
    if "nll" in test:
        return {"metric": "test NLL", "value": round(test["nll"], 2), "unit": "nats per image",
                "how": f"IWAE bound with k={test['k']} importance samples on {test['num_images']:,} test images "
                       f"binarized once (seed {seed})"}
    if "codebook_size" in test:  # a VQ-VAE: its codes are the compressed image
        return {"metric": "test PSNR", "value": round(test["psnr_db"], 2), "unit": "dB",
                "how": f"mean per-image PSNR of the {test['num_images']:,} test images decoded from their codes: "
                       f"{test['bytes_per_image']:g} bytes per image as fixed-length codes, "
                       f"{test['entropy_coded_bytes_per_image']:.1f} entropy-coded under the model's prior"}
    return {"metric": "test PSNR", "value": round(test["psnr_db"], 2), "unit": "dB",
            "how": "mean per-image PSNR of the reconstructions of the 10,000 test images" +
                   ("" if not binary else f" (binarized, seed {seed})")}


def write_card(name, version_dir):
    """Put `model_card` into the entry's manifests (the version's and its tflite/ copy), atomically.

    The manifests are not among the files they hash, so the export still verifies."""
    version_dir = Path(version_dir)
    card = model_card(name, version_dir)
    paths = [version_dir / "assets.extra" / export_lib.MANIFEST]
    tflite = version_dir.parent / "tflite" / export_lib.MANIFEST
    if tflite.is_file() and json.loads(tflite.read_text()).get("export_id") == json.loads(
            paths[0].read_text()).get("export_id"):
        paths.insert(0, tflite)  # the version's copy last: a version with a manifest is complete
    for path in paths:
        write_json(path, {**json.loads(path.read_text()), "name": name, "card": card})
    return card


# ---- the table in exported/README.md ---------------------------------------------------------------

TABLE_BEGIN, TABLE_END = "<!-- zoo-table: begin (written by scripts/reproduce.py --export-zoo) -->", \
    "<!-- zoo-table: end -->"


def _refresh_readme(zoo_dir):
    """Rewrite the table in zoo_dir/README.md (where there is one) from the entries' manifests."""
    readme = Path(zoo_dir) / "README.md"
    if readme.is_file():
        update_readme_table(readme, zoo_table(zoo_dir))


def _size(files):
    return sum(entry["bytes"] for entry in files.values())


def zoo_table(zoo_dir):
    """Markdown: one row per zoo model with its measured test metrics and file sizes (from the manifests)."""
    rows = ["| model | class, latent, parameters | test metrics (see notes) | SavedModel | decode TFLite fp32 / int8 "
            "| version |",
            "|---|---|---|---|---|---|"]
    for name in ZOO:
        manifest = _latest_manifest(Path(zoo_dir) / name)
        if manifest is None:
            continue
        test = (manifest.get("metrics") or {}).get("test") or {}
        if "nll" in test:
            metric = (f"NLL {test['nll']:.2f} nats (k={test['k']}), ELBO {test['elbo']:.2f}, "
                      f"{test['active_units']} active units")
        elif "codebook_size" in test:
            metric = (f"PSNR {test['psnr_db']:.2f} dB at {test['bytes_per_image']:g} bytes/image "
                      f"({test['entropy_coded_bytes_per_image']:.1f} entropy-coded)")
        else:
            metric = f"MSE {test['mse_per_pixel']:.4f}/pixel, PSNR {test['psnr_db']:.2f} dB"
        for row in (manifest.get("metrics") or {}).get("denoising", []):
            if (row["noise"], row["level"]) == ("gaussian", 0.5):
                metric += f"; gaussian 0.5: {row['psnr_noisy_db']:.1f} -> {row['psnr_denoised_db']:.1f} dB"
        tflite = (manifest.get("tflite") or {}).get("files", {})
        sizes = " / ".join(f"{tflite[f]['bytes'] / 2**20:.2f} MiB" for f in ("decode.fp32.tflite", "decode.int8.tflite")
                           if f in tflite)
        model = manifest["model"]
        parameters = (manifest.get("card") or {}).get("parameters")
        parameters = f", {parameters:,}" if parameters else ""
        rows.append(f"| `{name}` | {model['class']}, {manifest['latent_dim']}{parameters} | {metric} | "
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

"""What a new user meets first: the installed package, fast command-line answers, the zoo from anywhere."""

import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from conftest import REPO

SCRIPTS = ("train.py", "export.py", "evaluate.py", "reproduce.py", "convert.py")


def test_the_package_list_names_every_package():
    """pyproject lists packages by hand (to map exported/ in as kerasae.pretrained): a new one must be added."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "kerasae").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"kerasae.pretrained"}
    assert config["package-dir"] == {"kerasae.pretrained": "exported"}
    assert "tensorboard>=2.16" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


_PROBE = """
import runpy, sys
sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("EXIT", code, "TF", "tensorflow" in sys.modules, "KERAS", "keras" in sys.modules)
"""


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args,code", [(["--help"], 0), (["--no-such-flag"], 2)])
def test_scripts_answer_before_tensorflow_loads(script, args, code, tmp_path):
    """--help and a usage error come from argparse alone: no TensorFlow or Keras import (seconds) first."""
    probe = _PROBE.format(script=script, args=args, path=str(REPO / "scripts" / script))
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"EXIT {code} TF False KERAS False", proc.stderr[-2000:]


@pytest.mark.parametrize("args,message", [
    (["--arch", "vae", "--preset", "ae-conv"], "is a ae model, not --arch vae"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "codec-hyperprior-q3"], "train_codec.py --family hyperprior --quality 3"),
    (["--arch", "ae", "--k", "5"], "--k applies to vae and cvae presets"),
    (["--export", "a/b"], "--export: name must be"),
])
def test_train_usage_errors_need_no_tensorflow(args, message, tmp_path):
    """Errors that need the preset registry still answer before TF loads (the registry imports classes lazily)."""
    probe = _PROBE.format(script="train.py", args=args, path=str(REPO / "scripts" / "train.py"))
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "EXIT 2 TF False KERAS False", proc.stderr[-2000:]
    assert message in proc.stderr and proc.stderr.count("\n") <= 30


def test_reproduce_stages_named_for_the_parser_match_reproduce():
    from kerasae import cli, reproduce

    from kerasae import experiments

    assert cli.REPRODUCE_STAGES == tuple(reproduce.STAGES) == tuple(reproduce.RESULT_FILES)
    assert cli.FASHION_MNIST_DIR == experiments.DATA_DIRS["fashion_mnist"]


def test_import_kerasae_is_lazy_and_names_resolve(tmp_path):
    code = ("import sys, kerasae; assert 'tensorflow' not in sys.modules; kerasae.list_presets(); "
            "assert 'tensorflow' not in sys.modules; print(kerasae.VAE.__name__, kerasae.TrainConfig().epochs, "
            "kerasae.export.MANIFEST, sorted(set(kerasae.__all__) - set(dir(kerasae))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["VAE", "30", "manifest.json", "[]"], proc.stderr[-2000:]


# ---- the pretrained zoo from anywhere -----------------------------------------------------------

def test_zoo_loads_from_another_directory_without_environment(tmp_path):
    """The zoo ships with the package: no KERASAE_ZOO, and the working directory holds no exported/."""
    code = ("import numpy as np, kerasae; vae = kerasae.load_pretrained('iwae_mlp_50d_mnist'); "
            "x = vae.decode(np.zeros([1, vae.manifest['latent_dim']], np.float32)); "
            "print(tuple(x.shape), vae.path.parent.parent.name)")
    env = {k: v for k, v in os.environ.items() if k != "KERASAE_ZOO"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shape, zoo_dir = proc.stdout.split("\n")[-2].rsplit(" ", 1)
    assert shape == "(1, 28, 28, 1)" and zoo_dir in ("pretrained", "exported")


def test_an_unknown_zoo_model_names_what_is_available():
    from kerasae import zoo

    with pytest.raises(ValueError, match=r"no pretrained model 'vae-nope'.*available: ae_mlp_2d_mnist, "
                                         r"dae_mlp_64d_mnist, hvae_vamp_mlp_mnist, .*reproduce.py --export-zoo"):
        zoo.load_pretrained("vae-nope")
    with pytest.raises(ValueError, match="did you mean 'iwae_mlp_50d_mnist'"):
        zoo.load_pretrained("iwae_mlp_50_mnist")
    # A preset's name is not a pretrained model's: the error says what it is instead.
    with pytest.raises(ValueError, match=r"'vae-mlp' is a preset: kerasae.build\('vae-mlp'\)"):
        zoo.from_preset("vae-mlp")
    with pytest.raises(ValueError, match="zoo:NAME or zoo:NAME/VERSION"):
        zoo.load_keras_model("zoo:iwae_mlp_50d_mnist/latest")


ZOO_FOLDERS = sorted(p.name for p in (REPO / "exported").iterdir() if p.is_dir())
#: The autoencoders (the codec ladder's entries are codec folders: tests/test_codec_zoo.py)
ZOO_NAMES = [name for name in ZOO_FOLDERS if not (REPO / "exported" / name / "codec.json").is_file()]


def test_the_zoo_folder_holds_the_zoo():
    from kerasae import zoo
    from kerasae.codec.api import LADDERS

    assert ZOO_FOLDERS == sorted([*zoo.ZOO, *(name for ladder in LADDERS.values() for name in ladder)])


def test_readme_names_every_zoo_model():
    """README's zoo paragraph names exactly the shipped models (it listed four when there were five)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### The pretrained zoo", 1)[1].split("```", 1)[0]
    assert sorted(re.findall(r"`([a-z0-9]+(?:_[a-z0-9]+)+)`", section)) == ZOO_FOLDERS


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_entry_holds_its_keras_model(name, mnist_small):
    """The Keras model of each entry, rebuilt from its manifest and SavedModel (the zoo stores the weights once),
    is the SavedModel's model: same reconstructions, same scores."""
    from kerasae import export, zoo

    entry = zoo.load_pretrained(name)
    assert export.KERAS_MODEL not in entry.manifest["files"]["saved_model"]
    assert not (entry.path / export.KERAS_MODEL).exists()
    model = entry.keras_model()
    assert type(model).__name__ == entry.manifest["model"]["class"]
    assert model.get_config() == entry.manifest["model"]["config"]
    x = mnist_small.x_test[:32]
    np.testing.assert_allclose(model.reconstruct(x).numpy(), entry.reconstruct(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(model.score(x).numpy(), entry.score(x).numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_entry_serves_the_keras_models_methods(name, mnist_small):
    """load_pretrained(name) and from_preset(name) answer the same method names with the same types and values."""
    import tensorflow as tf

    from kerasae import zoo

    served, model = zoo.load_pretrained(name), zoo.from_preset(name)
    x = mnist_small.x_test[:16]
    for method in ("encode", "reconstruct", "score"):
        want, got = getattr(model, method)(x), getattr(served, method)(x)
        assert type(got) is type(want) or (tf.is_tensor(got) and tf.is_tensor(want)), (method, type(got))
        for w, g in zip(tf.nest.flatten(want), tf.nest.flatten(got), strict=True):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-3, err_msg=method)
    rng = np.random.default_rng(0)
    if model.family == "vqvae":  # its codes are codebook indices; float ones are refused as the Keras model does
        z = rng.integers(0, model.num_embeddings, (4, served.manifest["latent_dim"]), dtype=np.int32)
        with pytest.raises(TypeError, match="integer code indices"):
            served.decode(z.astype(np.float32))
    else:
        z = rng.standard_normal((4, served.manifest["latent_dim"])).astype(np.float32)
    np.testing.assert_allclose(served.decode(z).numpy(), model.decode(z).numpy(), atol=1e-5)
    assert served.sample(3).shape == model.sample(3, seed=0).shape == (3, 28, 28, 1)
    with pytest.raises(ValueError, match="seed"):
        served.sample(3, seed=0)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_card_says_what_the_model_is(name):
    """The card's preset plus its changes rebuild the shipped config; the headline is the manifest's measured
    metric; a zoo name is never a preset's name (whose configuration may differ)."""
    from kerasae import registry, zoo

    entry = zoo.load_pretrained(name)
    card, config = entry.card, entry.manifest["model"]["config"]
    assert name not in registry.PRESETS
    rebuilt = registry.build(card["preset"], image_shape=tuple(config["image_shape"]),
                             **card["changes_from_preset"]).get_config()
    ignore = ("name", "seed", "dtype", "trainable")
    assert json.loads(json.dumps({k: v for k, v in rebuilt.items() if k not in ignore})) == {
        k: v for k, v in config.items() if k not in ignore}
    assert card["class"] == entry.manifest["model"]["class"]
    assert card["parameters"] == entry.keras_model().count_params()
    test = entry.metrics["test"]
    if "nll" in test:
        assert card["headline"]["value"] == round(test["nll"], 2) and f"k={test['k']}" in card["headline"]["how"]
        assert card["objective"]["k"] == config["num_importance_samples"]
        assert ("IWAE" in card["objective"]["loss"]) == (config["num_importance_samples"] > 1)
    else:
        assert card["headline"]["value"] == round(test["psnr_db"], 2)
    assert card["pixels"].startswith("binarized") == (config.get("likelihood") == "bernoulli")


def test_an_export_without_model_keras_loads_rebuilt_and_the_zoo_reexports_to_that_form(tmp_path):
    """An export made with keras_model=False (or whose model.keras was never written) gives its Keras model
    rebuilt from the manifest's config and the SavedModel's variables; `zoo.reexport` turns an entry that
    holds model.keras into the next version without it, metrics kept."""
    import keras

    import kerasae
    from kerasae import export, zoo

    keras.utils.set_random_seed(3)
    model = kerasae.build("vae-mlp", hidden_units=(64,), latent_dim=4)
    model.build((None, 28, 28, 1))
    old = export.export_model(model, tmp_path, "tiny-vae", tflite=("fp32",), metrics={"test": {"nll": 500.0}})
    assert (old / export.KERAS_MODEL).is_file()
    lean = export.export_model(model, tmp_path / "lean", "tiny-vae", tflite=(), keras_model=False)
    manifest = json.loads((lean / "assets.extra" / export.MANIFEST).read_text())
    assert not (lean / export.KERAS_MODEL).exists() and manifest["keras_model"]["path"] is None
    assert sum(f.stat().st_size for f in lean.rglob("*")) < 0.6 * sum(f.stat().st_size for f in old.rglob("*"))
    for version_dir in (lean, old):
        rebuilt = export.rebuild_keras_model(version_dir)
        for want, got in zip(model.weights, rebuilt.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(export.load_keras_model(lean).score(x).numpy(), model.score(x).numpy(), rtol=1e-6)

    done = zoo.reexport(tmp_path)
    assert done == {"tiny-vae": tmp_path / "tiny-vae" / "2"} and not old.exists()
    entry = zoo.load_pretrained("tiny-vae", zoo_dir=tmp_path)
    assert entry.metrics == {"test": {"nll": 500.0}} and "re-exported from tiny-vae version 1" in entry.manifest["source"]
    assert not (entry.path / export.KERAS_MODEL).exists()
    np.testing.assert_allclose(entry.keras_model().score(x).numpy(), model.score(x).numpy(), rtol=1e-6)
    assert zoo.reexport(tmp_path) == {}  # entries already in the zoo's form are left alone


def test_a_rebuild_refuses_weights_that_do_not_fit_the_config(tmp_path):
    from kerasae import export

    import kerasae

    model = kerasae.build("ae-shallow", latent_dim=8)
    model.build((None, 28, 28, 1))
    version_dir = export.export_model(model, tmp_path, "ae", tflite=(), keras_model=False)
    manifest_path = version_dir / "assets.extra" / export.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["config"]["latent_dim"] = 9
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(kerasae.files.ModelFileError, match="do not match a Autoencoder.*encoder/enc_out/kernel"):
        export.rebuild_keras_model(version_dir)


def test_fine_tune_a_zoo_model_on_other_images(tmp_path):
    """init_from="zoo:NAME": the verified zoo model trains on the user's images, converted to its input shape."""
    import kerasae
    from kerasae import zoo

    rng = np.random.default_rng(0)
    images = (rng.random((300, 32, 32, 3)) * 255).astype(np.uint8)  # another size and colour mode than MNIST
    np.savez(tmp_path / "mine.npz", x_train=images[:240], x_test=images[240:])
    result = kerasae.train(init_from="zoo:ae_mlp_2d_mnist", dataset=f"npz:{tmp_path / 'mine.npz'}", epochs=1,
                           batch_size=60, validation_size=60, out=str(tmp_path / "run"), verbose=0)
    assert type(result.model).__name__ == "Autoencoder" and tuple(result.model.image_shape) == (28, 28, 1)
    start = zoo.from_preset("ae_mlp_2d_mnist")
    moved = [not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(start.weights, result.model.weights)]
    assert all(moved)  # every weight was trained from the zoo's values
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["init_from"] == "zoo:ae_mlp_2d_mnist"


def test_an_unknown_zoo_model_is_a_usage_error(tmp_path):
    from conftest import run_script

    proc = run_script("train.py", "--init-from", "zoo:nope", "--out", tmp_path / "run", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert "no pretrained model 'nope'" in proc.stderr and "available: ae_mlp_2d_mnist" in proc.stderr


def test_readme_quotes_the_main_job_as_measured():
    """README's main-job figures are those benchmarks/main_job.py wrote, from a quiet machine."""
    import re

    result = json.loads((REPO / "benchmarks" / "results" / "main_job.json").read_text())
    job = result["job"]
    assert job["command"] == ["python", "scripts/train.py", "--arch", "vae"] and not result["quick"]
    assert not result["machine_at_start"]["busy"] and not result["machine_at_end"]["busy"]
    text = " ".join((REPO / "README.md").read_text().split())
    quoted = re.search(r"the main job \(the whole command\) takes (\d+) s \((\d+) s of it training (\d+) epochs\) "
                       r"and reaches a test negative ELBO of ([\d.]+) nats \(reconstruction ([\d.]+), KL ([\d.]+)\)",
                       text)
    assert quoted, "README no longer quotes the main job"
    assert [float(v) for v in quoted.groups()] == [
        round(job["wall_time_s"]), round(job["train_wall_time_s"]), job["epochs"], round(-job["test"]["elbo"], 2),
        round(job["test"]["reconstruction_loss"], 2), round(job["test"]["kl"], 2)]


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(tmp_path):
    """README's quickstart, block by block in a fresh directory with a folder of RGB PNGs of another size: the
    Python blocks as written (the last in a process where kerasae cannot be imported, with the first block's x),
    the commands through `python -m kerasae` (what the installed `kerasae` runs)."""
    from PIL import Image

    section = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(python)?\n(.*?)```", section, flags=re.S)
    assert [lang for lang, _ in blocks] == ["python", "", "python"], "the quickstart's shape changed"
    (first, commands, served) = (code for _, code in blocks)
    rng = np.random.default_rng(0)
    (tmp_path / "my_images").mkdir()
    for i in range(40):
        Image.fromarray((rng.random((36, 44, 3)) * 255).astype(np.uint8)).save(tmp_path / "my_images" / f"{i}.png")

    def run(args, code=None):
        proc = subprocess.run(args, cwd=tmp_path, input=code, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    run([sys.executable, "-"], first + "\nimport numpy as np\nnp.save('x.npy', np.asarray(x))\n"
        "assert tuple(x_hat.shape) == tuple(digits.shape) == (8, 28, 28, 1)\n")
    for line in commands.strip().splitlines():
        command = line.split("#", 1)[0].split()
        assert command[0] == "kerasae"
        run([sys.executable, "-m", "kerasae", *command[1:]])
    run([sys.executable, "-"], "import sys\nsys.modules['kerasae'] = None\nimport numpy as np\nx = np.load('x.npy')\n"
        + served + "\nassert tuple(x_hat.shape) == (8, 28, 28, 1), x_hat.shape\n")

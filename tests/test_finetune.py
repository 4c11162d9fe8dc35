"""Fine-tuning end to end: a zoo model on a user's folder of other images, then export and evaluate with no extra
flags; fine-tuning continues the model's objective (no KL warm-up restart); the flags --init-from takes."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import tensorflow as tf

import kerasae
import kerasae.evaluate
import kerasae.export
from kerasae import cli
from kerasae import training as train_lib
from kerasae.config import reopen_options
from kerasae.training import recipe

#: An MNIST VAE of the zoo: the cheapest to fine-tune and export (a 2-D code, a small MLP).
ZOO_VAE = "zoo:vae_mlp_2d_mnist"


def _rgb_png_folder(root, train=40, test=8, size=40):
    """MNIST digits as tinted RGB PNGs of size x size (not the zoo's 28x28x1) in root/train and root/test."""
    from PIL import Image

    mnist = kerasae.data.load_mnist()
    tint = np.array([1.0, 0.6, 0.3])
    for split, x in (("train", mnist.x_train[:train]), ("test", mnist.x_test[:test])):
        (root / split).mkdir(parents=True)
        for i, image in enumerate(x[..., 0]):
            big = np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((size, size)), np.float64)
            Image.fromarray(np.round(big[..., None] * tint).astype(np.uint8)).save(root / split / f"{i:03d}.png")
    return root


def _test_images_as_a_user_would_give_them(folder):
    """The folder's test images read with the flags a user would otherwise pass, binarized as a test split is."""
    data = kerasae.data.open_dataset(f"images:{folder}", image_size=(28, 28), color_mode="grayscale",
                                     log=lambda *a: None)
    return kerasae.data.binarize(data.x_test, seed=kerasae.data.TEST_BINARIZATION_SEED)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A CLI fine-tune of ZOO_VAE on RGB 40x40 PNGs: (run directory, the folder, what train.py printed)."""
    root = tmp_path_factory.mktemp("finetune")
    folder = _rgb_png_folder(root / "png")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.train_main(["--init-from", ZOO_VAE, "--dataset", f"images:{folder}", "--epochs", "1",
                               "--batch-size", "16", "--validation-size", "8", "--out", str(root / "run"),
                               "--verbose", "2"])  # 2: the log, one line per epoch
    assert code == 0
    return root / "run", folder, out.getvalue()


def test_a_fine_tuned_run_records_the_conversion_and_says_it_once(fine_tuned):
    run, folder, printed = fine_tuned
    line = f"images:{folder}: RGB 40x40 -> grayscale 28x28 to fit {ZOO_VAE}'s input, binarized (Bernoulli likelihood)"
    assert printed.count(line) == 1, printed
    assert f"objective: ELBO (k=1), beta 1, no KL warm-up; continued from {ZOO_VAE}\n" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["image_size"] is None and config["train"]["color_mode"] is None  # what was asked
    data = config["data"]
    assert (data["image_size"], data["color_mode"], data["image_shape"]) == ([28, 28], "grayscale", [28, 28, 1])
    assert (data["source_image_shape"], data["binarized"], data["fitted_to"]) == ([40, 40, 3], True, ZOO_VAE)
    assert config["objective"] == {"family": "vae", "bound": "elbo", "k": 1, "beta": 1.0, "kl_warmup_steps": 0,
                                   "likelihood": "bernoulli"}


def test_a_fine_tuned_run_exports_with_no_extra_flags(fine_tuned, tmp_path):
    run, folder, _ = fine_tuned
    code = cli.export_main([str(run), "--name", "mine", "--export-dir", str(tmp_path), "--tflite", "fp32"])
    assert code == 0
    version_dir = kerasae.export.export_run(run, "mine-api", export_dir=tmp_path, tflite=("fp32",),
                                            tflite_signatures=("reconstruct",))
    manifest = json.loads((version_dir / "assets.extra" / kerasae.export.MANIFEST).read_text())
    # parity measured on the run's test images, converted as in training: a SavedModel call on the same images
    # (read here with the flags a user would otherwise have to give) reproduces the recorded mean
    parity = manifest["tflite"]["files"]["reconstruct.fp32.tflite"]["parity"]
    assert parity and all(np.isfinite(d["max_diff"]) for d in parity.values())
    x = _test_images_as_a_user_would_give_them(folder)
    served = tf.saved_model.load(str(version_dir)).signatures["reconstruct"](x=tf.constant(x))
    model = kerasae.load_model(run / "model.keras")
    np.testing.assert_allclose(list(served.values())[0].numpy(), model.reconstruct(x).numpy(), atol=1e-5)


def test_a_fine_tuned_run_evaluates_on_its_converted_images(fine_tuned):
    run, folder, _ = fine_tuned
    result = kerasae.evaluate.evaluate_run(run, k=4, progress=False)
    x = _test_images_as_a_user_would_give_them(folder)
    model = kerasae.evaluate.load_model(run)
    mse = float(((x.astype(np.float64) - model.reconstruct(x).numpy()) ** 2).mean())
    assert result["num_test"] == len(x) == 8
    assert result["vae"]["reconstruction"]["mse_per_pixel"] == pytest.approx(mse, rel=1e-4)


def test_the_objective_line_says_what_fine_tuning_trains():
    """A zoo VAE with k=5 trains the IWAE-5 bound, and a saved warm-up that is not restarted is named."""
    iwae = {"family": "vae", "bound": "iwae", "k": 5, "beta": 1.0, "kl_warmup_steps": 0, "likelihood": "bernoulli"}
    assert recipe.describe_objective(iwae, "zoo:iwae_mlp_50d_mnist") == (
        "objective: IWAE-5 bound (k=5), beta 1, no KL warm-up; continued from zoo:iwae_mlp_50d_mnist; --k 1 trains "
        "the ELBO")
    elbo = {**iwae, "bound": "elbo", "k": 1}
    assert recipe.describe_objective(elbo, "zoo:vae_resnet_32d_mnist", saved_warmup=4300) == (
        "objective: ELBO (k=1), beta 1, no KL warm-up; continued from zoo:vae_resnet_32d_mnist (its 4300-step warm-up "
        "is not restarted; --kl-warmup-steps N restarts one)")
    assert recipe.describe_objective({**elbo, "beta": 0.5, "kl_warmup_steps": 200}) == (
        "objective: ELBO (k=1), beta 0.5, KL warm-up over 200 steps")


@pytest.mark.parametrize("preset, kwargs, line", [
    ("ae-shallow", {}, "ae reconstruction loss (bce)"),
    ("ae-sparse", {"sparsity_weight": 0.3}, "ae reconstruction loss (bce) + 0.3 x l1 sparsity penalty"),
    ("ae-sparse", {"sparsity": "kl", "code_activation": "sigmoid", "sparsity_weight": 0.2, "sparsity_target": 0.1},
     "ae reconstruction loss (bce) + 0.2 x kl sparsity penalty, target 0.1"),
    ("ae-contractive", {"contractive_weight": 0.05, "reconstruction_loss": "mse"},
     "ae reconstruction loss (mse) + 0.05 x contractive penalty"),
    ("vqvae-mlp", {"commitment_cost": 0.5}, "vqvae reconstruction loss (bce) + 0.5 x commitment loss (codebook: "
     "moving averages)"),
    ("vqvae-mlp", {"codebook_update": "loss"}, "vqvae reconstruction loss (bce) + 0.25 x commitment loss + codebook "
     "loss (codebook: its loss)"),
])
def test_the_objective_line_names_every_penalty_an_autoencoder_trains_with(preset, kwargs, line):
    """The log line and a zoo card's objective name each term of the loss (a VQ-VAE's card once left out its
    commitment term)."""
    assert recipe.describe_objective(recipe.objective(kerasae.build(preset, **kwargs))) == f"objective: {line}"


def test_runs_without_recorded_data_options_reopen_with_their_training_flags():
    """Runs written before config.json had "data" reopen with "train"'s image_size and color_mode, as before."""
    old = {"train": {"dataset": "images:x", "image_size": [32, 32], "color_mode": "rgb"}}
    assert reopen_options(old) == ((32, 32), "rgb")
    assert reopen_options({"train": {"dataset": "mnist", "image_size": None, "color_mode": None}}) == (None, None)
    new = {**old, "data": {"image_size": [28, 28], "color_mode": "grayscale"}}
    assert reopen_options(new) == ((28, 28), "grayscale")


@pytest.mark.slow
def test_fine_tuning_the_residual_vae_continues_its_objective(tmp_path):
    """zoo:vae_resnet_32d_mnist trained with a 4,300-step KL warm-up: fine-tuning does not restart it, so epoch 1's loss
    is its reconstruction + KL (beta 1, k 1), not a reconstruction with a KL weight near 0."""
    from PIL import Image

    mnist = kerasae.data.load_mnist()
    for split, x in (("train", mnist.x_train[:96]), ("test", mnist.x_test[:16])):
        (tmp_path / "png" / split).mkdir(parents=True)
        for i, image in enumerate(np.round(x[..., 0] * 255).astype(np.uint8)):
            Image.fromarray(image).save(tmp_path / "png" / split / f"{i:03d}.png")
    kerasae.train(init_from="zoo:vae_resnet_32d_mnist", dataset=f"images:{tmp_path / 'png'}", epochs=1, batch_size=32,
                  validation_size=32, out=str(tmp_path / "run"), verbose=0)
    with open(tmp_path / "run" / "history.csv") as f:
        epoch = {k: float(v) for k, v in next(csv.DictReader(f)).items()}
    assert epoch["kl"] > 5.0  # a KL large enough that a near-zero weight would show
    assert epoch["loss"] == pytest.approx(epoch["reconstruction_loss"] + epoch["kl"], rel=0.01)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["objective"]["bound"] == "elbo" and config["objective"]["kl_warmup_steps"] == 0
    assert config["model"]["config"]["kl_warmup_steps"] == 0


# ---- the model flags --init-from takes ------------------------------------------------------------

def _config(argv):
    parser = cli.build_train_parser()
    return cli.config_from_args(parser, parser.parse_args(argv))


def test_training_flags_reach_a_fine_tuned_model():
    config = _config(["--init-from", ZOO_VAE, "--k", "3", "--beta", "0.5"])
    assert config.model_kwargs == {"num_importance_samples": 3, "beta": 0.5}
    model = train_lib._make_model(config, (28, 28, 1), tf.distribute.get_strategy())
    assert (model.num_importance_samples, model.beta, model.latent_dim) == (3, 0.5, 2)
    assert recipe.objective(model)["bound"] == "iwae"
    dae = _config(["--init-from", "zoo:dae_mlp_64d_mnist", "--noise", "masking:0.3"])  # a DAE's corruption: training
    model = train_lib._make_model(dae, (28, 28, 1), tf.distribute.get_strategy())
    assert (model.noise_type, model.noise_level) == ("masking", 0.3)


def test_a_warm_up_restarts_only_when_asked(tmp_path):
    """A saved model with a KL warm-up fine-tunes without it; --kl-warmup-steps N gives it back."""
    saved = tmp_path / "warm.keras"
    kerasae.build("vae-mlp-2d", hidden_units=[16], kl_warmup_steps=500).save(saved)
    strategy = tf.distribute.get_strategy()
    model = train_lib._make_model(train_lib.TrainConfig(init_from=str(saved)), (28, 28, 1), strategy)
    assert model.kl_warmup_steps == 0
    asked = _config(["--init-from", str(saved), "--kl-warmup-steps", "200"])
    assert train_lib._make_model(asked, (28, 28, 1), strategy).kl_warmup_steps == 200


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _config(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ")
    return last


@pytest.mark.parametrize("argv,message", [
    (["--init-from", ZOO_VAE, "--latent-dim", "8"],
     "--latent-dim changes the architecture, which --init-from takes from the saved model; with --init-from only "
     "the training flags --k, --beta, --kl-warmup-steps, --noise apply"),
    (["--init-from", ZOO_VAE, "--k", "2", "--prior", "vamp"], "--prior changes the architecture"),
    (["--init-from", ZOO_VAE, "--arch", "vae"], "--arch chooses a new model; --init-from fine-tunes the saved model"),
    (["--preset", "vae-conv", "--init-from", ZOO_VAE], "--preset chooses a new model; --init-from fine-tunes"),
    (["--pseudo-inputs", "50"], "--pseudo-inputs applies with --prior vamp; vae-mlp's prior is standard"),
    (["--preset", "hvae-mlp", "--pseudo-inputs", "50"], "--pseudo-inputs applies with --prior vamp"),
    (["--kl-warmup-steps", "-1"], "argument --kl-warmup-steps: must be an integer >= 0"),
    (["--arch", "ae", "--kl-warmup-steps", "10"], "--kl-warmup-steps applies to vae and cvae presets"),
])
def test_flags_that_cannot_act_are_refused(argv, message, capsys):
    assert message in _usage_error(argv, capsys)


def test_pseudo_inputs_with_a_vamp_prior_are_taken():
    assert _config(["--preset", "hvae-mlp-vamp", "--pseudo-inputs", "50"]).model_kwargs == {"num_pseudo_inputs": 50}

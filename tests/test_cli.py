"""scripts/train.py as a user runs it: outputs per family, and usage errors with exit code 2."""

import csv
import json
import re

import keras
import numpy as np
import pytest

from conftest import run_script
import kerasae
import kerasae.data
from kerasae import cli

TINY = ["--max-train-samples", "300", "--max-test-samples", "100", "--epochs", "1", "--batch-size", "64",
        "--verbose", "0"]


@pytest.mark.parametrize("arch,model_class", [("ae", "Autoencoder"), ("dae", "DenoisingAutoencoder"), ("vae", "VAE")])
def test_train_script_writes_a_loadable_run(arch, model_class, tmp_path):
    export = ["--export", f"{arch}-tiny", "--export-dir", tmp_path / "exported"] if arch == "vae" else []
    proc = run_script("train.py", "--arch", arch, *TINY, "--out", tmp_path / arch, *export, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / arch
    for name in ("config.json", "metrics.json", "model.keras", "best.keras", "history.csv",
                 "figures/reconstructions.png", "figures/samples.png"):
        assert (run / name).is_file(), name
    assert "run directory:" in proc.stdout
    kerasae.register_classes()  # what README says plain Keras needs when kerasae was imported before keras
    model = keras.saving.load_model(run / "model.keras")
    assert type(model).__name__ == model_class
    assert json.loads((run / "config.json").read_text())["preset"] == cli.registry.DEFAULT_PRESETS[arch]
    if export:  # --export NAME: a verified SavedModel + TFLite export straight after training
        from kerasae import export as export_lib

        assert f"exported: {tmp_path / 'exported' / 'vae-tiny' / '1'}" in proc.stdout
        assert export_lib.verify(tmp_path / "exported" / "vae-tiny") == []
        assert (tmp_path / "exported" / "vae-tiny" / "tflite" / "decode.int8.tflite").is_file()


def test_train_script_usage_error_exits_2(tmp_path):
    proc = run_script("train.py", "--epochs", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "train.py: error: argument --epochs: must be an integer >= 1, got '0'"
    assert not (tmp_path / "runs").exists()


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.train_main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ")
    return last


@pytest.mark.parametrize("argv,message", [
    (["--arch", "gan"], "argument --arch: invalid choice: 'gan'"),
    (["--preset", "vae-mpl"], "unknown preset 'vae-mpl'; did you mean 'vae-mlp'? ("),
    (["--arch", "vae", "--preset", "ae-shallow"], "--preset ae-shallow is a ae model, not --arch vae"),
    (["--preset", "codec-hyperprior-q3"], "--preset 'codec-hyperprior-q3' is a learned image codec, which trains "
     "with `python scripts/train_codec.py --family hyperprior --quality 3`"),
    (["--arch", "vae", "--preset", "codec-factorized-q8"], "train_codec.py --family factorized --quality 8"),
    (["--preset", "codec-hyperprior-q9"], "did you mean 'codec-hyperprior-q8'?"),
    (["--arch", "codec"], "argument --arch: invalid choice: 'codec'"),
    (["--epochs", "-1"], "argument --epochs: must be an integer >= 1"),
    (["--batch-size", "zero"], "argument --batch-size: must be an integer >= 1"),
    (["--latent-dim", "0"], "argument --latent-dim: must be an integer >= 1"),
    (["--k", "0"], "argument --k: must be an integer >= 1"),
    (["--init-from", "runs/x/model.keras", "--latent-dim", "5"], "--init-from takes from the saved model"),
    (["--beta", "-0.5"], "argument --beta: must be >= 0"),
    (["--learning-rate", "0"], "argument --learning-rate: must be > 0"),
    (["--arch", "dae", "--noise", "masking:1.5"], "noise level must be > 0 and < 1 for masking"),
    (["--arch", "dae", "--noise", "blur:0.1"], "noise type must be one of"),
    (["--arch", "ae", "--beta", "2"], "--beta applies to vae and cvae presets, not ae-mlp-seed"),
    (["--arch", "vae", "--noise", "gaussian:0.3"], "--noise applies to dae presets"),
    (["--image-size", "0x5"], "argument --image-size"),
    (["--export", "../escape"], "--export: name must be"),
    (["--prior", "gmm"], "argument --prior: invalid choice: 'gmm'"),
    (["--arch", "vqvae", "--prior", "vamp"], "--prior applies to vae and cvae presets, not vqvae-conv (vqvae)"),
    (["--arch", "ae", "--pseudo-inputs", "50"], "--pseudo-inputs applies to vae and cvae presets, not ae-mlp-seed"),
    (["--pseudo-inputs", "0"], "argument --pseudo-inputs: must be an integer >= 1"),
    (["--scale", "row"], "argument --scale: invalid choice: 'row'"),
    (["--arch", "ae", "--scale", "pixel"], "--scale applies to vae and cvae presets, not ae-mlp-seed"),
    (["--scale", "pixel"], "--scale applies to a gaussian or discretized_logistic likelihood; vae-mlp's is bernoulli"),
    (["--likelihood", "gaussian", "--fixed-scale", "0.2"], "--fixed-scale applies with --scale fixed"),
    (["--likelihood", "gaussian", "--scale", "fixed", "--fixed-scale", "0"], "argument --fixed-scale: must be > 0"),
])
def test_bad_arguments(argv, message, capsys):
    assert message in _usage_error(argv, capsys)


def test_a_hierarchical_vaes_latent_dim_is_its_layers_sum(capsys, tmp_path):
    argv = ["--preset", "hvae-mlp", "--latent-dim", "7", "--out", str(tmp_path / "run"), *TINY]
    assert "latent_dim is the sum of latent_dims (40, 40)" in _usage_error(argv, capsys)


def test_prior_flags_reach_the_model():
    parser = cli.build_train_parser()
    config = cli.config_from_args(parser, parser.parse_args(["--preset", "hvae-mlp", "--prior", "vamp",
                                                             "--pseudo-inputs", "20"]))
    assert config.model_kwargs == {"prior_type": "vamp", "num_pseudo_inputs": 20}
    model = kerasae.build(config.preset, **config.model_kwargs)
    assert model.prior_type == "vamp" and tuple(model.pseudo_inputs.shape) == (20, 28, 28, 1)


@pytest.mark.parametrize("argv,scale", [
    (["--likelihood", "discretized_logistic", "--scale", "decoder"], None),
    (["--preset", "vae-mlp-gaussian", "--scale", "channel"], None),
    (["--arch", "cvae", "--likelihood", "gaussian", "--scale", "fixed", "--fixed-scale", "0.05"], 0.05),
])
def test_scale_flags_reach_the_model(argv, scale):
    parser = cli.build_train_parser()
    config = cli.config_from_args(parser, parser.parse_args(argv))
    model = kerasae.build(config.preset, **config.model_kwargs)
    assert model.gaussian_scale == argv[argv.index("--scale") + 1]
    if model.gaussian_scale == "decoder":  # 2C output channels: the location's logits, then the scale's
        z, _ = model.encode(np.full((2, *model.image_shape), 0.5, np.float32))
        assert model.decoder(z).shape[-1] == 2 * model.image_shape[-1]
        assert model.decoder_scale(z).shape == (2, *model.image_shape)
    elif scale is not None:
        np.testing.assert_allclose(model.decoder_scale().numpy(), scale)
    else:  # one learned scale per channel
        assert tuple(model._raw_scale.shape) == tuple(model.image_shape[-1:])


@pytest.mark.parametrize("dataset,message", [
    ("bogus:x", "unknown dataset spec 'bogus:x'"),
    ("idx:/no/such/dir", "/no/such/dir"),
    ("npz:/no/such/file.npz", "/no/such/file.npz"),
])
def test_bad_datasets(dataset, message, capsys, tmp_path):
    assert message in _usage_error(["--dataset", dataset, "--out", str(tmp_path / "run"), *TINY], capsys)


def test_unwritable_out_and_mixed_runs_are_refused(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert "cannot" in _usage_error(["--out", str(blocker / "run"), *TINY], capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"preset": "ae-shallow"}}))
    assert "holds a run with a different config" in _usage_error(["--out", str(run), *TINY], capsys)


def test_list_presets(capsys):
    assert cli.train_main(["--list-presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[name, preset.family]
                                                    for name, preset in cli.registry.PRESETS.items()]
    codecs = [line for line in lines if line.split()[1] == "codec"]
    assert len(codecs) == 16 and all("scripts/train_codec.py" in line for line in codecs)
    assert len({re.match(r"\S+\s+\S+\s+", line).end() for line in lines}) == 1  # the descriptions line up


def _mnist_png_folder(root, train, test):
    """The first `train` and `test` MNIST images as PNG files in root/train and root/test."""
    from PIL import Image

    mnist = kerasae.data.load_mnist()
    for split, x in (("train", mnist.x_train[:train]), ("test", mnist.x_test[:test])):
        (root / split).mkdir(parents=True)
        for i, image in enumerate(np.round(x[..., 0] * 255).astype(np.uint8)):
            Image.fromarray(image).save(root / split / f"{i:05d}.png")
    return root


def test_bad_images_and_unstreamable_data_are_one_line_usage_errors(capsys, tmp_path):
    folder = _mnist_png_folder(tmp_path / "png", 40, 10)
    (folder / "train" / "00007.png").write_bytes((folder / "train" / "00007.png").read_bytes()[:60])  # truncated
    run = ["--out", str(tmp_path / "run"), *TINY]
    last = _usage_error(["--dataset", f"images:{folder}", *run], capsys)
    assert "00007.png" in last and "--skip-bad-images" in last
    assert not (tmp_path / "run" / "model.keras").exists()
    last = _usage_error(["--dataset", "mnist", "--data-mode", "stream", *run], capsys)
    assert "scripts/convert.py" in last


def test_convert_then_train_streams_the_shards(capsys, tmp_path):
    """convert.py writes an image folder as shards; train.py streams them: the splits, labels and a run as usual."""
    folder = _mnist_png_folder(tmp_path / "png", 200, 40)
    shards = tmp_path / "shards"
    assert cli.convert_main([f"images:{folder}", str(shards), "--shard-mb", "1"]) == 0
    assert sorted(p.name for p in shards.iterdir()) == [
        "kerasae_dataset.json", "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord"]
    out = tmp_path / "run"
    assert cli.train_main(["--preset", "vae-mlp", "--dataset", f"tfrecord:{shards}", "--data-mode", "stream",
                           "--validation-size", "50", "--epochs", "1", "--batch-size", "32", "--verbose", "0",
                           "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["streamed"] and (metrics["num_train"], metrics["num_validation"], metrics["num_test"]) == (150, 50, 40)
    assert np.isfinite(metrics["test"]["loss"]) and metrics["test_binarization_seed"] == kerasae.data.TEST_BINARIZATION_SEED
    assert (out / "figures").is_dir() and any((out / "figures").iterdir())


@pytest.mark.parametrize("argv, message", [
    (["mnist"], "the following arguments are required: out_dir"),
    (["bogus:x", "OUT"], "unknown dataset spec 'bogus:x'"),
    (["mnist", "OUT", "--shard-mb", "0"], "argument --shard-mb"),
    (["images:/no/such/dir", "OUT"], "/no/such/dir"),
    (["mnist", "FULL"], "already exists and is not an empty directory"),
])
def test_convert_usage_errors(argv, message, capsys, tmp_path):
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "keep.txt").write_text("mine")
    argv = [str(tmp_path / a) if a in ("OUT", "FULL") else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.convert_main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("convert.py: error: ") and message in last
    assert (tmp_path / "FULL" / "keep.txt").read_text() == "mine" and not (tmp_path / "OUT").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["memory", "streamed"])
def test_kill_9_mid_training_then_rerun_resumes(tmp_path, source):
    """kill -9 of scripts/train.py after its second epoch has begun; the same command again resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    out = tmp_path / "run"
    if source == "memory":
        data, steps = ["--max-train-samples", "8000", "--max-test-samples", "200"], 57  # 7200 images / batch 128
    else:
        folder = _mnist_png_folder(tmp_path / "png", 3000, 200)
        data, steps = ["--dataset", f"images:{folder}", "--data-mode", "stream"], 22  # 2700 images / batch 128
    argv = [sys.executable, str(REPO / "scripts" / "train.py"), "--preset", "vae-mlp", *data,
            "--epochs", "4", "--verbose", "0", "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = out / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not (meta.exists() and json.loads(meta.read_text())["epoch"] >= 1) and proc.poll() is None:
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(meta.read_text())["epoch"]
    assert 1 <= killed_at < 4 and not (out / "model.keras").exists()

    rerun = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with open(out / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]  # every epoch once: none lost, none repeated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["resumed_from_epoch"] == killed_at
    kerasae.register_classes()
    model = keras.saving.load_model(out / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 4 * steps
    assert metrics["streamed"] == (source == "streamed")
    assert not (out / "backup").exists()


def test_deterministic_runs_give_identical_weights(tmp_path):
    digests = []
    for run in ("a", "b"):
        proc = run_script("train.py", "--preset", "dae-mlp", "--deterministic", "--seed", "7", *TINY, "--epochs", "2",
                          "--out", tmp_path / run, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        digests.append(json.loads((tmp_path / run / "metrics.json").read_text())["weights_sha256"])
        assert f"weights sha256: {digests[-1]}" in proc.stdout
    assert digests[0] == digests[1]
    other = run_script("train.py", "--preset", "dae-mlp", "--deterministic", "--seed", "8", *TINY, "--epochs", "2",
                       "--out", tmp_path / "c", cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["weights_sha256"] != digests[0]


@pytest.mark.parametrize("flags,jit_compile", [([], None), (["--jit-compile"], True), (["--no-jit-compile"], False)])
def test_jit_compile_flag_is_three_way(flags, jit_compile):
    parser = cli.build_train_parser()
    assert cli.config_from_args(parser, parser.parse_args(flags)).jit_compile is jit_compile

"""kerasae.training: the run directory, TensorBoard summaries, resuming and fine-tuning."""

import contextlib
import csv
import io
import json
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import kerasae
from kerasae import training as train_lib

SMALL = dict(epochs=2, batch_size=64, max_train_samples=600, max_test_samples=200, verbose=0)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae2d"
    return kerasae.train(preset="vae-mlp-2d", model_kwargs={"hidden_units": [64]}, out=str(out), **SMALL)


def _events(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def test_run_directory_holds_every_output(vae_run):
    run = vae_run.run_dir
    for name in ("config.json", "metrics.json", "model.keras", "best.keras", "history.csv",
                 "figures/reconstructions.png", "figures/samples.png", "figures/latent.png"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # BackupAndRestore cleans up after a completed run
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test) == {"loss", "reconstruction_loss", "kl", "elbo"}
    assert all(np.isfinite(v) for v in test.values())
    assert test["elbo"] == pytest.approx(-(test["reconstruction_loss"] + test["kl"]), rel=1e-4)
    assert (metrics["num_train"], metrics["num_validation"], metrics["num_test"]) == (540, 60, 200)
    assert metrics["epochs"] == 2 and metrics["test_binarization_seed"] == train_lib.TEST_BINARIZATION_SEED
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "vae-mlp-2d" and config["model"]["class"] == "VAE"
    assert config["model"]["config"]["hidden_units"] == [64]
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and "val_loss" in rows[0] and "kl" in rows[0]
    loaded = keras.saving.load_model(run / "model.keras")
    x = kerasae.data.binarize(kerasae.load_dataset().x_test[:16])
    np.testing.assert_array_equal(loaded.reconstruct(x).numpy(), vae_run.model.reconstruct(x).numpy())


def test_tensorboard_has_scalars_and_images(vae_run):
    logs = vae_run.run_dir / "logs"
    train_tags = _events(logs / "train").Tags()["tensors"]
    assert {"epoch_loss", "epoch_kl", "epoch_elbo", "epoch_reconstruction_loss"} <= set(train_tags)
    assert "epoch_loss" in _events(logs / "validation").Tags()["tensors"]
    images = _events(logs / "images")
    assert {"reconstructions", "samples"} <= set(images.Tags()["tensors"])
    for tag, shape in (("reconstructions", (2 * 28, 8 * 28)), ("samples", (4 * 28, 4 * 28))):
        events = images.Tensors(tag)
        assert [e.step for e in events] == [0, 1]
        # an image summary is [width, height, PNG bytes...]
        png = tf.make_ndarray(events[-1].tensor_proto)[2]
        assert tf.io.decode_png(png).shape[:2] == shape


def test_rerun_with_another_config_is_refused(vae_run):
    config = train_lib.TrainConfig(preset="vae-mlp-2d", model_kwargs={"hidden_units": [64]},
                                   out=str(vae_run.run_dir), **{**SMALL, "epochs": 3})
    with pytest.raises(ValueError, match="different config.*epochs"):
        train_lib.prepare(config)


VAE_RUN = dict(preset="vae-mlp-2d", model_kwargs={"hidden_units": [64]}, **SMALL)


def _snapshot(run_dir):
    """Every path under run_dir (itself included) with its mtime and, for a file, its bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in [run_dir, *run_dir.rglob("*")]}


def test_train_returns_a_finished_run_as_it_is(vae_run, capsys, monkeypatch):
    """The same config again (verbose aside): the finished run, loaded, in one line; nothing trained or written."""
    from kerasae.training import core

    run = vae_run.run_dir
    before = _snapshot(run)
    trained = []
    monkeypatch.setattr(core, "fit", lambda *args, **kwargs: trained.append(args))
    capsys.readouterr()
    result = kerasae.train(**{**VAE_RUN, "verbose": 2}, out=str(run))
    assert trained == [] and _snapshot(run) == before
    metrics = json.loads((run / "metrics.json").read_text())
    assert result.run_dir == run and result.metrics == metrics and metrics["epochs"] == 2
    assert result.history == train_lib.read_history(run / "history.csv")
    assert [r["epoch"] for r in result.history] == [0, 1] and type(result.model) is kerasae.VAE
    digest = train_lib.weights_digest(result.model)
    assert digest == metrics["weights_sha256"] == train_lib.weights_digest(vae_run.model)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{run} already holds this finished run (2 epochs; test: ")
    assert f"loss {metrics['test']['loss']:.4g}" in out[0] and out[0].endswith("overwrite=True) trains it again")
    assert kerasae.train(**VAE_RUN, out=str(run)).metrics == metrics  # verbose=0: silent
    assert capsys.readouterr().out == "" and trained == [] and _snapshot(run) == before


class _Trains(Exception):
    pass


def test_train_trains_an_interrupted_run_or_with_overwrite_and_refuses_another_config(vae_run, tmp_path, monkeypatch):
    import shutil

    from kerasae.training import core

    def prepare(config):  # reached: it trains (what prepare and fit then do is tested above and below)
        raise _Trains(config.overwrite)

    copy = tmp_path / "interrupted"
    shutil.copytree(vae_run.run_dir, copy)
    recorded = json.loads((copy / "config.json").read_text())
    recorded["train"]["out"] = str(copy)
    (copy / "config.json").write_text(json.dumps(recorded))
    (copy / "backup").mkdir()  # BackupAndRestore's state: a run not finished
    monkeypatch.setattr(core, "prepare", prepare)
    with pytest.raises(_Trains, match="False"):
        kerasae.train(**VAE_RUN, out=str(copy))
    (copy / "backup").rmdir()
    assert kerasae.train(**VAE_RUN, out=str(copy)).metrics["epochs"] == 2  # the same copy, finished
    with pytest.raises(_Trains, match="True"):
        kerasae.train(**VAE_RUN, out=str(copy), overwrite=True)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different config.*epochs"):
        kerasae.train(**{**VAE_RUN, "epochs": 3}, out=str(copy))
    assert (copy / "model.keras").is_file()


@pytest.mark.parametrize("bad", [{"model_kwargs": {"latent_dim": 0}}, {"dataset": "npz:missing.npz"},
                                 {"validation_size": 10**6}])
def test_a_usage_error_leaves_no_run_directory(bad, tmp_path):
    """Bad data or model settings are refused before the run directory (or any parent of it) is made."""
    out = tmp_path / "new" / "run"
    config = train_lib.TrainConfig(**{**SMALL, "preset": "vae-mlp", "out": str(out), **bad})
    with pytest.raises(ValueError):
        train_lib.prepare(config)
    assert not (tmp_path / "new").exists()


def test_fine_tune_from_a_saved_model(vae_run, tmp_path):
    result = kerasae.train(init_from=str(vae_run.run_dir / "model.keras"), out=str(tmp_path / "ft"),
                           **{**SMALL, "epochs": 1})
    assert type(result.model) is kerasae.VAE and result.model.latent_dim == 2
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["train"]["init_from"].endswith("model.keras") and config["preset"] is None


def test_fine_tune_with_other_training_settings_starts_from_the_saved_weights(vae_run):
    """init_from + model_kwargs: same network, another objective (here the IWAE bound, no KL warm-up)."""
    saved = vae_run.run_dir / "model.keras"
    config = train_lib.TrainConfig(init_from=str(saved), model_kwargs={"num_importance_samples": 3,
                                                                       "kl_warmup_steps": 0})
    model = train_lib._make_model(config, (28, 28, 1), tf.distribute.get_strategy())
    assert (model.num_importance_samples, model.kl_warmup_steps, model.latent_dim) == (3, 0, 2)
    original = keras.saving.load_model(saved)
    for new, old in zip(model.weights, original.weights, strict=True):
        np.testing.assert_array_equal(new.numpy(), old.numpy())
    x = kerasae.data.binarize(kerasae.load_dataset().x_test[:8])
    np.testing.assert_allclose(model.reconstruct(x).numpy(), original.reconstruct(x).numpy(), atol=1e-6)
    for overrides, match in (({"latent_dim": 3}, r"change the architecture.*enc_out/kernel"),
                             ({"hidden_units": [32]}, "change the architecture"),
                             ({"no_such_setting": 1}, r"init_from .*: model_kwargs \['no_such_setting'\] do not apply"),
                             ({"num_importance_samples": 0}, "num_importance_samples")):
        with pytest.raises(ValueError, match=match):
            train_lib._make_model(train_lib.TrainConfig(init_from=str(saved), model_kwargs=overrides),
                                  (28, 28, 1), tf.distribute.get_strategy())


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_from_the_last_epoch(tmp_path, monkeypatch):
    kwargs = dict(preset="ae-shallow", out=str(tmp_path / "ae"), **{**SMALL, "epochs": 3})
    original = train_lib.AtomicBackupAndRestore.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):  # once the backup holds it (the backup writes last)
        original(self, epoch, logs)
        if epoch == 1:
            raise _Crash

    monkeypatch.setattr(train_lib.AtomicBackupAndRestore, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(_Crash):
        kerasae.train(**kwargs)
    assert (tmp_path / "ae" / "backup").exists() and not (tmp_path / "ae" / "model.keras").exists()
    monkeypatch.undo()
    result = kerasae.train(**kwargs)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.metrics["epochs"] == 3 and result.metrics["resumed_from_epoch"] == 2
    assert int(result.model.optimizer.iterations.numpy()) == 3 * 9  # 540 images / 64 per step, 3 epochs
    assert set(result.metrics["test"]) == {"loss", "reconstruction_loss", "mse"}
    assert not (tmp_path / "ae" / "figures" / "latent.png").exists()  # 32-D code: no scatter plot


def test_mixed_precision_keeps_losses_float32(tmp_path):
    # one iterator (10 steps of 54 images per epoch, no validation): the bfloat16 steps run in the XLA loop
    result = kerasae.train(preset="vae-mlp", mixed_precision=True, out=str(tmp_path / "mp"),
                           **{**SMALL, "epochs": 1, "batch_size": 54, "validation_size": 0})
    assert result.metrics["train_function"] == "xla-execution"
    model = result.model
    assert model.encoder.layers[0].dtype_policy.name == "mixed_bfloat16"  # no GPU here: bfloat16
    assert model.encoder.layers[0].compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # the process default is left alone
    terms = model.compute_terms(kerasae.data.binarize(kerasae.load_dataset().x_test[:8]))
    assert all(t.dtype == tf.float32 for t in terms.values())
    assert all(np.isfinite(v) for v in result.metrics["test"].values())
    reloaded = keras.saving.load_model(result.run_dir / "model.keras")
    assert reloaded.encoder.layers[0].compute_dtype == "bfloat16"


def test_float16_gets_a_loss_scale_optimizer(mnist_small):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = kerasae.build("ae-shallow")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(mnist_small.x_train[:128], batch_size=32, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][1] < history.history["loss"][0]


def test_divergence_stops_cleanly_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    out = tmp_path / "diverge"
    original = train_lib.DivergenceGuard.on_train_batch_end
    epochs = []

    def poison_in_second_epoch(self, batch, logs=None):  # a good epoch 0, then the weights blow up
        if len(epochs) == 2:
            self.model.set_weights([w * np.nan for w in self.model.get_weights()])
        original(self, batch, logs)

    monkeypatch.setattr(train_lib.DivergenceGuard, "on_epoch_begin", lambda self, epoch, logs=None: epochs.append(epoch),
                        raising=False)
    monkeypatch.setattr(train_lib.DivergenceGuard, "on_train_batch_end", poison_in_second_epoch)
    with pytest.raises(FloatingPointError, match="diverged.*last good state is kept in .*best.keras and .*backup"):
        kerasae.train(preset="ae-shallow", out=str(out), **{**SMALL, "epochs": 3})
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists()
    assert train_lib.backup_epoch(out / "backup") == 1  # the backup of epoch 0, not the poisoned epoch 1
    good = keras.saving.load_model(out / "best.keras")
    assert train_lib.weights_finite(good)


def test_a_nan_loss_stops_at_once(tmp_path):
    with pytest.raises(FloatingPointError, match="diverged"):
        kerasae.train(preset="vae-mlp-gaussian", learning_rate=1e4, lr_schedule="constant", out=str(tmp_path / "x"),
                      **{**SMALL, "epochs": 3})


def test_read_history_skips_the_na_cells_of_epochs_without_validation(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,2.5,NA\n1,2.0,1.5\n")
    assert train_lib.read_history(path) == [{"epoch": 0, "loss": 2.5}, {"epoch": 1, "loss": 2.0, "val_loss": 1.5}]


def test_one_iterator_steps_divide_the_epoch():
    assert train_lib.one_iterator_steps(430, 40, 16) == 10  # MNIST at batch 128: 55,000 / 5,000 images
    assert train_lib.one_iterator_steps(430, 0, 16) == 10
    assert train_lib.one_iterator_steps(32, 8, 16) == 8
    assert train_lib.one_iterator_steps(9, 1, 16) is None  # only 1 divides both: keep per-epoch iterators
    assert train_lib.one_iterator_steps(469, 0, 16) == 7  # 60,000 images, no validation
    assert train_lib.one_iterator_steps(431, 0, 16) is None  # a prime: 1 step per call would cost more
    assert train_lib.one_iterator_steps(9, 0, 2) is None and train_lib.one_iterator_steps(10, 0, 1) == 1


def test_plan_executions_runs_no_more_steps_per_call_than_an_epoch_has():
    plan = train_lib.plan_executions
    assert plan(430, 40, 16, replicated=False, custom_loop=False) == (10, True)  # one iterator: whole executions
    assert plan(15, 2, 16, replicated=False, custom_loop=False) == (15, False)  # 2,048 MNIST images: 16 asked
    assert plan(431, 0, 16, replicated=False, custom_loop=False) == (16, False)  # the last call runs 15
    assert plan(9, 1, 4, replicated=True, custom_loop=False) == (1, False)  # Keras' multi-step function fails
    assert plan(430, 40, 16, replicated=True, custom_loop=False) == (10, True)
    assert plan(430, 40, 16, replicated=True, custom_loop=True) == (1, False)  # multiworker.loop_fit: a step a call


@pytest.fixture(scope="module")
def verbose_runs(tmp_path_factory):
    """Two runs with Keras' progress bar on (verbose=1) and per-epoch iterators (9 training steps, 1 validation
    step: no divisor for one iterator): more steps per call than an epoch has (16) and a number that does not
    divide it (4: the epoch's last call runs 1 step). Returns {steps per call: metrics}, the printed output, each
    (step, target) the bar was updated with (printed or not: it skips updates within 0.05 s) and the warnings."""
    out = tmp_path_factory.mktemp("verbose")
    updates, runs, stdout = [], {}, io.StringIO()
    update = keras.utils.Progbar.update

    def recording_update(self, current, values=None, finalize=None):
        updates.append((current, self.target))
        return update(self, current, values, finalize)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        mp.setattr(keras.utils.Progbar, "update", recording_update)
        for per_call in (16, 4):
            runs[per_call] = kerasae.train(preset="ae-shallow", out=str(out / str(per_call)),
                                           steps_per_execution=per_call, **{**SMALL, "verbose": 1}).metrics
    return runs, stdout.getvalue(), updates, [str(w.message) for w in caught]


def test_progress_bar_never_counts_past_the_epoch(verbose_runs):
    runs, printed, updates, _ = verbose_runs
    for per_call, metrics in runs.items():
        assert metrics["one_iterator"] is False
        assert metrics["steps_per_execution"] == min(per_call, 9)  # what ran: a call has at most the epoch's steps
    shown = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)", re.sub(r"Epoch \d+/\d+", "", printed))]
    assert shown and all(target == 9 for _, target in shown)
    assert max(step for step, _ in shown) == 9, printed  # Keras alone shows 16/9 (16 steps per call asked)
    assert updates and all(step <= target == 9 for step, target in updates), updates  # Keras alone reaches 12/9 (4 per call)


def test_fit_gets_no_shuffle_warning(verbose_runs):
    """fit's shuffle defaults to True, which Keras warns is ignored for a tf.data dataset (kerasae shuffles in it)."""
    messages = verbose_runs[3]
    assert not [m for m in messages if "shuffle" in m or "ran out of data" in m], messages


def test_one_iterator_run_makes_exact_passes(tmp_path):
    """With one iterator for the run, each epoch is still exactly one pass over the training and the
    validation images: the step count is exact and the last validation loss is the final model's."""
    result = kerasae.train(preset="ae-shallow", out=str(tmp_path / "ae"), epochs=2, batch_size=54,
                           steps_per_execution=2, max_train_samples=600, max_test_samples=100, verbose=0)
    assert result.metrics["one_iterator"] is True and result.metrics["steps_per_execution"] == 2
    assert int(result.model.optimizer.iterations.numpy()) == 2 * 10  # 540 images / 54 per step, 2 epochs
    x_val = kerasae.data.split_validation(kerasae.load_dataset().x_train[:600], 60)[1]
    val = result.model.evaluate(kerasae.data.make_dataset(x_val, 54), return_dict=True, verbose=0)
    assert result.history[-1]["val_loss"] == pytest.approx(val["loss"], rel=1e-5)


@pytest.mark.parametrize("preset, jit, kind", [
    ("vae-mlp", None, "xla-execution"), ("ae-shallow", None, "xla-execution"), ("iwae-mlp", None, "xla-execution"),
    ("vae-conv", None, "keras"), ("dae-mlp", None, "keras"), ("ae-contractive", None, "keras"),
    ("dae-mlp", True, "xla-execution"), ("vae-conv", True, "xla-execution"), ("vae-mlp", False, "keras"),
    ("ae-contractive", True, "keras")])  # not xla_loop_safe: True gives Keras' per-step XLA
def test_auto_xla_compiles_the_models_that_gain(preset, jit, kind):
    model, config = kerasae.build(preset), train_lib.TrainConfig(jit_compile=jit)
    assert train_lib.train_function_kind(config, model, replicated=False, whole_executions=True) == kind
    # per-epoch iterators: no whole executions to compile (True then means Keras' per-step XLA)
    assert train_lib.train_function_kind(config, model, replicated=False, whole_executions=False) == "keras"
    replicated = train_lib.train_function_kind(config, model, replicated=True, whole_executions=True)
    assert replicated == "replicated-execution"


def test_jit_compile_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="jit_compile must be True, False or None"):
        train_lib.TrainConfig(jit_compile="auto").validate()


def test_xla_executions_train_the_same_steps_as_keras(tmp_path):
    """Each call's steps compiled by XLA (the default for MLPs) train the same batches, an epoch's partial last
    batch included, as Keras' train function: the same step count and the same losses up to rounding."""
    kwargs = dict(preset="ae-shallow", epochs=2, batch_size=64, validation_size=0, max_train_samples=600,
                  max_test_samples=100, verbose=0)  # 9 batches of 64 and one of 24 per epoch
    runs = {jit: kerasae.train(jit_compile=jit, out=str(tmp_path / str(jit)), **kwargs) for jit in (None, False)}
    assert runs[None].metrics["train_function"] == "xla-execution" and runs[False].metrics["train_function"] == "keras"
    for result in runs.values():
        assert result.metrics["one_iterator"] is True and result.metrics["steps_per_execution"] == 10
        assert int(result.model.optimizer.iterations.numpy()) == 2 * 10
    for xla_epoch, keras_epoch in zip(runs[None].history, runs[False].history, strict=True):
        assert xla_epoch["loss"] == pytest.approx(keras_epoch["loss"], rel=1e-4)
    for name, value in runs[False].metrics["test"].items():
        assert runs[None].metrics["test"][name] == pytest.approx(value, rel=1e-3)
    # deterministic reruns of the XLA path give identical weights
    again = kerasae.train(jit_compile=None, out=str(tmp_path / "again"), **kwargs)
    assert again.metrics["weights_sha256"] == runs[None].metrics["weights_sha256"]

"""The conditional VAE: labels through the pipeline, into the model, its errors, training and export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import cli, optimizers
from kerasae.data import DataError, make_dataset, open_dataset
from kerasae.models.cvae import flag_bad_labels
from test_streaming import class_folder


def _pairs(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_array_batches_keep_each_label_with_its_image(rng):
    x = rng.random((50, 4, 4, 1), dtype=np.float32)
    x[:, 0, 0, 0] = np.arange(50) / 50  # an id in the first pixel
    y = (np.arange(50) * 7) % 10
    for kwargs in ({}, {"shuffle": True, "seed": 3}, {"binarize": True, "seed": 1}):
        batches = _pairs(make_dataset(x if not kwargs.get("binarize") else x.round(), 16, labels=y, **kwargs))
        assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
        for images, labels in batches:
            assert labels.dtype == np.int32
            if "binarize" not in kwargs:
                ids = np.round(images[:, 0, 0, 0] * 50).astype(int)
                np.testing.assert_array_equal(labels, y[ids])
    with pytest.raises(DataError, match="one integer label per image"):
        make_dataset(x, 16, labels=y[:10])
    with pytest.raises(DataError, match="labels"):
        make_dataset(x, 16, labels=np.linspace(0, 1, 50))


def test_streamed_batches_carry_the_folders_labels(tmp_path):
    truth = class_folder(tmp_path)
    data = open_dataset(f"images:{tmp_path}", mode="stream")
    train = data.train
    pixels, _ = train.to_arrays()  # in the order of train.paths: each image's label from its folder's name
    label_of = {image.tobytes(): truth[str(path)] for image, path in zip(pixels, train.paths)}
    seen = 0
    for images, labels in make_dataset(train, 8, labels=True, shuffle=True, seed=0):
        assert images.shape[1:] == (8, 8, 3) and labels.dtype == tf.int32
        assert labels.numpy().tolist() == [label_of[image.tobytes()] for image in images.numpy()]
        seen += len(labels)
    assert seen == train.count
    flat = tmp_path / "flat"
    class_folder(flat, classes=("only",))
    unlabelled = open_dataset(f"images:{flat / 'only'}", mode="stream").train
    with pytest.raises(DataError, match="has none"):
        make_dataset(unlabelled, 8, labels=True)


@pytest.fixture(scope="module")
def trained(mnist_binary, mnist_small):
    keras.utils.set_random_seed(0)
    model = kerasae.build("cvae-mlp", hidden_units=(128,), latent_dim=4, seed=0)
    model.compile(optimizer=optimizers.Adam(3e-3))
    model.fit(mnist_binary, mnist_small.y_train, epochs=15, batch_size=32, verbose=0)
    return model


def test_evaluation_reads_each_image_with_its_label(trained, mnist_small):
    """The IWAE NLL, posterior statistics and reconstructions of evaluate take the labels: the images' own give a
    lower NLL than wrong ones, and the k-sample bound stays below the -ELBO."""
    from kerasae import evaluate as ev
    from kerasae.data import binarize

    x, y = binarize(mnist_small.x_test[:40], seed=0), mnist_small.y_test[:40]
    right = ev.evaluate_vae(trained, x, k=50, progress=False, labels=y)
    wrong = ev.evaluate_vae(trained, x, k=50, progress=False, labels=(y + 1 + np.arange(len(y)) % 9) % 10)
    assert right["nll"] < wrong["nll"] - 5 and right["nll"] <= -right["elbo"], (right["nll"], wrong["nll"])
    mean, _ = trained.encode(x, y)
    np.testing.assert_allclose(np.mean(right["activity_per_dim"]), np.mean(np.var(mean.numpy(), axis=0)), rtol=1e-3)
    with pytest.raises(ValueError, match="labels must be in \\[0, 10\\)"):
        ev.importance_weighted_nll(trained, x, k=2, labels=np.full(40, 10), progress=False)


def test_the_label_carries_information(trained, mnist_small):
    """With a 4-D code the label must do work: test images score better (a lower -ELBO) with their own label than
    with a wrong one, and samples of one class look alike more than samples of different classes."""
    from kerasae.data import binarize

    x, y = binarize(mnist_small.x_test, seed=0), mnist_small.y_test
    right = trained.score(x, y).numpy()
    wrong = trained.score(x, (y + 1 + np.arange(len(y)) % 9) % 10).numpy()
    assert np.mean(right) < np.mean(wrong) - 5, (np.mean(right), np.mean(wrong))
    # decoding the same codes as a 1 and as a 0 gives different images: fewer ink pixels for the 1
    z = tf.random.stateless_normal([64, 4], seed=[0, 1])
    ones, zeros = trained.decode(z, np.ones(64, int)).numpy(), trained.decode(z, np.zeros(64, int)).numpy()
    assert ones.mean() < zeros.mean()


def test_sample_labels(trained):
    assert trained.sample(5, 3, seed=0).shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(trained.sample(4, 3, seed=0).numpy(), trained.sample(4, [3, 3, 3, 3], seed=0))
    assert not np.array_equal(trained.sample(4, 3, seed=0).numpy(), trained.sample(4, 7, seed=0).numpy())
    with pytest.raises(ValueError, match="one label per example"):
        trained.sample(4, [1, 2], seed=0)


def test_bad_labels(trained, mnist_binary):
    x = mnist_binary[:3]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), found 10"):
        trained.score(x, [1, 10, 2])
    with pytest.raises(ValueError, match="found -1"):
        trained.encode(x, [1, -1, 2])
    with pytest.raises(TypeError, match="integer class indices"):
        trained.reconstruct(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"one label per example \(3\)"):
        trained.score(x, [1, 2])
    with pytest.raises(ValueError, match="shape"):
        trained.decode(tf.zeros([3, 4]), [[1], [2], [3]])
    with pytest.raises(ValueError, match="labels as Keras' targets"):
        trained.fit(x, epochs=1, verbose=0)
    # a traced graph cannot raise: a bad label's score is NaN, the others are the eager scores
    traced = tf.function(lambda x, labels: trained.score(x, labels))
    scores = traced(tf.constant(x), tf.constant([1, 10, 2])).numpy()
    assert np.isnan(scores[1]) and np.allclose(scores[[0, 2]], trained.score(x[[0, 2]], [1, 2]).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(flag_bad_labels(tf.constant([0, 3, -1]), 3, tf.ones([3, 2])).numpy(),
                                  [[1, 1], [np.nan, np.nan], [np.nan, np.nan]])


def test_a_conditional_vampprior_mixes_the_posteriors_of_pseudo_image_label_pairs(mnist_binary, mnist_small, tmp_path):
    """prior_type="vamp": p(z) = (1/K) sum_k q(z | u_k, y_k), y_k = k mod C (every class equally often); it is
    learned with the model, drives `sample`, saves and loads, and exports (the sample signature takes a label)."""
    tfd = kerasae.losses.tfd
    keras.utils.set_random_seed(0)
    model = kerasae.build("cvae-mlp", hidden_units=(64,), latent_dim=4, prior_type="vamp", num_pseudo_inputs=25,
                          seed=0)
    np.testing.assert_array_equal(model.pseudo_labels().numpy(), np.arange(25) % 10)
    u = tf.clip_by_value(model.pseudo_inputs, 0.0, 1.0)
    means, log_vars = model.encode(u, np.arange(25) % 10)
    other_means, _ = model.encode(u, (np.arange(25) + 1) % 10)
    assert not np.allclose(means.numpy(), other_means.numpy())  # the labels reach the components
    mixture = tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros([25])),
                                    tfd.MultivariateNormalDiag(means, tf.exp(0.5 * log_vars)))
    z = np.random.default_rng(0).normal(size=(7, 4)).astype("float32")
    np.testing.assert_allclose(model.prior_log_prob(z).numpy(), mixture.log_prob(z).numpy(), rtol=1e-5, atol=1e-4)
    x, y = mnist_binary[:6], mnist_small.y_train[:6]
    eps = tf.random.stateless_normal([20_000, 6, 4], seed=[0, 0])
    _, log_pz, _, kl = model.sample_terms(model.check_inputs((x, y)), eps)
    mean, log_var = model.encode(x, y)
    drawn_z = mean + tf.exp(0.5 * log_var) * eps[:3]  # the codes sample_terms drew, [3, 6, 4]
    np.testing.assert_allclose(log_pz[:3].numpy(), mixture.log_prob(drawn_z).numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(model.kl_divergence(mean, log_var).numpy(), kl.numpy(), rtol=0.1, atol=0.2)

    before = model.pseudo_inputs.numpy().copy()
    model.compile(optimizer=optimizers.Adam(3e-3))
    history = model.fit(mnist_binary, mnist_small.y_train, epochs=2, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and not np.allclose(model.pseudo_inputs.numpy(), before)
    path = tmp_path / "cvae-vamp.keras"
    model.save(path)
    loaded = kerasae.load_model(path)
    assert loaded.get_config()["prior_type"] == "vamp"
    np.testing.assert_array_equal(loaded.sample(4, 3, seed=1).numpy(), model.sample(4, 3, seed=1).numpy())
    version = kerasae.export.export_model(model, tmp_path / "exported", name="cvae-vamp", tflite=())
    drawn = tf.saved_model.load(str(version)).signatures["sample"](num_samples=tf.constant(5),
                                                                    label=tf.constant(3))["x_mean"].numpy()
    assert drawn.shape == (5, 28, 28, 1) and np.isfinite(drawn).all()


def test_train_needs_labels(tmp_path):
    x = np.random.default_rng(0).random((40, 28, 28, 1)).astype(np.float32)
    np.savez(tmp_path / "nolabels.npz", x_train=x, x_test=x[:8])
    with pytest.raises(DataError, match="has no labels"):
        kerasae.train(preset="cvae-mlp", dataset=f"npz:{tmp_path / 'nolabels.npz'}", epochs=1,
                      out=str(tmp_path / "run"), verbose=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_binary, mnist_small):
    keras.utils.set_random_seed(0)
    model = kerasae.build("cvae-mlp", seed=0)
    model.compile(optimizer=optimizers.Adam(1e-3))
    model.fit(mnist_binary, mnist_small.y_train, epochs=3, batch_size=32, verbose=0)
    version = kerasae.export.export_model(model, tmp_path_factory.mktemp("exported"), name="cvae",
                                          representative_data=mnist_binary)
    return model, version, tf.saved_model.load(str(version))


def test_export_signatures_take_labels(exported):
    model, version, loaded = exported
    image, code = ([None, 28, 28, 1], "float32"), ([None, model.latent_dim], "float32")
    labels = ([None], "int32")
    expected = {  # written out, not derived from kerasae.export
        "reconstruct": ({"x": image, "label": labels}, {"reconstruction": image}),
        "encode": ({"x": image, "label": labels}, {"z_mean": code, "z_log_var": code}),
        "decode": ({"z": code, "label": labels}, {"x_mean": image, "logits": image}),
        "sample": ({"num_samples": ([], "int32"), "label": ([], "int32")}, {"z": code, "x_mean": image}),
        "score": ({"x": image, "label": labels}, {"score": ([None], "float32")}),
    }
    for name, (inputs, outputs) in expected.items():
        fn = loaded.signatures[name]
        assert {k: (s.shape.as_list(), s.dtype.name) for k, s in fn.structured_input_signature[1].items()} == inputs
        assert {k: (s.shape.as_list(), s.dtype.name) for k, s in fn.structured_outputs.items()} == outputs


def test_exported_model_follows_its_labels(exported, mnist_binary):
    model, version, loaded = exported
    x, labels = mnist_binary[:4], np.array([3, 1, 4, 1], np.int32)
    z = np.random.default_rng(0).standard_normal((4, model.latent_dim)).astype(np.float32)
    sig = loaded.signatures
    np.testing.assert_allclose(sig["decode"](z=tf.constant(z), label=tf.constant(labels))["x_mean"].numpy(),
                               model.decode(z, labels).numpy(), atol=1e-6)
    np.testing.assert_allclose(sig["score"](x=tf.constant(x), label=tf.constant(labels))["score"].numpy(),
                               model.score(x, labels).numpy(), rtol=1e-5)
    drawn = sig["sample"](num_samples=tf.constant(3), label=tf.constant(7))
    np.testing.assert_allclose(drawn["x_mean"].numpy(), model.decode(drawn["z"], [7, 7, 7]).numpy(), atol=1e-6)
    # TFLite: every file within its parity bound (labels cycle through the classes), fp32 decode equals the SavedModel
    tflite_part = json.loads((version / "assets.extra" / "manifest.json").read_text())["tflite"]
    # int8 sample: the converter leaves the concatenation of its float N(0, I) draw and the one-hot label in
    # float32 (decode.int8, fed z and a label, is fully integer); score.int8 as for every VAE
    assert set(tflite_part["skipped"]) == {"score.int8.tflite", "sample.int8.tflite"}
    assert len(tflite_part["files"]) == 18
    assert tflite_part["out_of_tolerance"] == {}, tflite_part["out_of_tolerance"]
    # fp16 kernels rounded by GPTQ on the calibration images with labels (not to nearest)
    rounding = {entry["float32_weights"]["float16_rounding"] for entry in tflite_part["files"].values()
                if entry["variant"] == "fp16"}
    assert len(rounding) == 1 and rounding.pop().startswith("GPTQ on "), rounding
    tflite = version.parent / "tflite" / "decode.fp32.tflite"
    got = kerasae.export.run_tflite(tflite, "decode", z=z, label=labels)["x_mean"]
    np.testing.assert_allclose(got, model.decode(z, labels).numpy(), atol=1e-5)


def test_a_bad_label_gives_nan_in_the_exported_graphs(exported, mnist_binary):
    model, version, loaded = exported
    x, labels = tf.constant(mnist_binary[:3]), tf.constant([1, 10, -2])
    sig = loaded.signatures
    for name, out in (("reconstruct", sig["reconstruct"](x=x, label=labels)["reconstruction"]),
                      ("score", sig["score"](x=x, label=labels)["score"]),
                      ("decode", sig["decode"](z=tf.zeros([3, model.latent_dim]), label=labels)["x_mean"])):
        flat = tf.reshape(out, [3, -1]).numpy()
        assert np.isfinite(flat[0]).all() and np.isnan(flat[1:]).all(), name
    assert np.isnan(sig["sample"](num_samples=tf.constant(2), label=tf.constant(10))["x_mean"].numpy()).all()
    tflite = version.parent / "tflite" / "reconstruct.fp32.tflite"
    got = kerasae.export.run_tflite(tflite, "reconstruct", x=mnist_binary[:3], label=np.array([1, 10, 2], np.int32))
    flat = got["reconstruction"].reshape(3, -1)
    assert np.isnan(flat[1]).all() and np.isfinite(flat[[0, 2]]).all()


def test_train_writes_a_run_with_label_conditioned_figures(tmp_path):
    result = kerasae.train(preset="cvae-mlp", epochs=1, max_train_samples=600, max_test_samples=100,
                           validation_size=100, out=str(tmp_path / "run"), verbose=0)
    assert np.isfinite(result.metrics["test"]["elbo"])
    assert (tmp_path / "run" / "figures" / "samples.png").stat().st_size > 1000
    loaded = kerasae.load_model(tmp_path / "run" / "model.keras")
    assert loaded.conditional and loaded.num_classes == 10
    assert cli.evaluate_main([str(tmp_path / "run"), "--k", "5", "--no-progress"]) in (0, None)
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["family"] == "cvae" and evaluation["num_test"] == 100
    vae = evaluation["vae"]
    assert vae["nll"] <= -vae["elbo"] and vae["k"] == 5 and np.isfinite(evaluation["prior_match"]["mmd2"])

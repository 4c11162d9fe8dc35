"""Property-based checks of the exported signatures (hypothesis), on tiny untrained models exported once.

A SavedModel signature must refuse a wrong dtype or shape through its spec (not give a plausible answer
of the wrong size, nor fail deep inside the graph), give finite outputs of the documented shapes for valid
input, and flag a non-finite pixel with a NaN score for that example alone (SavedModel and TFLite).
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras

import kerasae
from kerasae import export

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])
IMAGE = (28, 28, 1)
#: case -> (preset, overrides, latent dim, decode's second output): the contract, written out
CASES = {
    "ae": ("ae-shallow", {"latent_dim": 8}, 8, "logits"),
    # Gaussian: an Inf pixel would give an Inf score (not NaN) without the flag; a Bernoulli/BCE score goes NaN anyway
    "vae": ("vae-mlp-gaussian", {"hidden_units": (16,), "latent_dim": 4}, 4, "x_scale"),
}
TFLITE_VARIANTS = ("fp32", "fp16", "dynamic")
#: what a signature's spec says when it refuses an input (dtype, shape, or key)
REFUSED = r"expected to be a (float|int32) tensor|is not compatible with expected shape|argument"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigs")
    out = {}
    for case, (preset, overrides, _, _) in CASES.items():
        keras.utils.set_random_seed(0)
        model = kerasae.build(preset, **overrides)
        version_dir = export.export_model(model, root, case, tflite=TFLITE_VARIANTS, tflite_signatures=("score",))
        out[case] = (model, tf.saved_model.load(str(version_dir)), version_dir.parent / "tflite")
    return out


def _refused(fn, **inputs):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match=REFUSED):
        fn(**inputs)


wrong_image_shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=1, max_side=30).filter(
    lambda s: not (len(s) == 4 and s[1:] == IMAGE))
wrong_dtypes = st.sampled_from([tf.float64, tf.float16, tf.bfloat16, tf.int32, tf.int64, tf.uint8, tf.bool])


@SETTINGS
@given(case=st.sampled_from(sorted(CASES)), shape=wrong_image_shapes,
       signature=st.sampled_from(["serving_default", "reconstruct", "encode", "score"]))
def test_image_signatures_refuse_wrong_shapes(exported, case, shape, signature):
    sig = exported[case][1].signatures[signature]
    _refused(sig, x=tf.zeros(shape, tf.float32))


@SETTINGS
@given(case=st.sampled_from(sorted(CASES)), dtype=wrong_dtypes, batch=st.integers(0, 3),
       signature=st.sampled_from(["serving_default", "reconstruct", "encode", "score"]))
def test_image_signatures_refuse_wrong_dtypes(exported, case, dtype, batch, signature):
    sig = exported[case][1].signatures[signature]
    _refused(sig, x=tf.zeros((batch, *IMAGE), dtype))


@SETTINGS
@given(case=st.sampled_from(sorted(CASES)), data=st.data())
def test_decode_and_sample_refuse_wrong_shapes_and_dtypes(exported, case, data):
    _, loaded, _ = exported[case]
    latent = CASES[case][2]
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=10).filter(
        lambda s: not (len(s) == 2 and s[1] == latent)), label="z shape")
    _refused(loaded.signatures["decode"], z=tf.zeros(shape, tf.float32))
    _refused(loaded.signatures["decode"], z=tf.zeros((2, latent), data.draw(wrong_dtypes, label="z dtype")))
    _refused(loaded.signatures["decode"], x=tf.zeros((2, latent)))  # the wrong key
    count_shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3), label="n shape")
    _refused(loaded.signatures["sample"], num_samples=tf.ones(count_shape, tf.int32))
    n_dtype = data.draw(st.sampled_from([tf.float32, tf.int64, tf.int16]), label="n dtype")
    _refused(loaded.signatures["sample"], num_samples=tf.constant(3, n_dtype))


@SETTINGS
@given(case=st.sampled_from(sorted(CASES)),
       x=hnp.arrays(np.float32, st.tuples(st.integers(0, 4), *map(st.just, IMAGE)), elements=st.floats(0, 1, width=32)),
       codes=st.integers(0, 4), n=st.integers(1, 6), data=st.data())
def test_valid_inputs_give_finite_outputs_of_the_documented_shapes(exported, case, x, codes, n, data):
    _, loaded, _ = exported[case]
    latent, second = CASES[case][2], CASES[case][3]
    z = data.draw(hnp.arrays(np.float32, (codes, latent), elements=st.floats(-5, 5, width=32)), label="z")
    b = len(x)
    want = {
        "serving_default": ({"x": x}, {"reconstruction": (b, *IMAGE)}),
        "reconstruct": ({"x": x}, {"reconstruction": (b, *IMAGE)}),
        "encode": ({"x": x}, {"z": (b, latent)} if case == "ae" else {"z_mean": (b, latent), "z_log_var": (b, latent)}),
        "decode": ({"z": z}, {"x_mean": (len(z), *IMAGE), second: (len(z), *IMAGE)}),
        "sample": ({"num_samples": np.int32(n)}, {"z": (n, latent), "x_mean": (n, *IMAGE)}),
        "score": ({"x": x}, {"score": (b,)}),
    }
    for signature, (inputs, shapes) in want.items():
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert {k: tuple(v.shape) for k, v in out.items()} == shapes, signature
        for key, value in out.items():
            value = value.numpy()
            assert value.dtype == np.float32 and np.isfinite(value).all(), (signature, key)
            if key in ("reconstruction", "x_mean"):
                assert value.min(initial=0) >= 0 and value.max(initial=1) <= 1
            if key == "x_scale":
                assert value.min(initial=1) > 0


@SETTINGS
@given(case=st.sampled_from(sorted(CASES)), batch=st.integers(1, 4), data=st.data(),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_a_non_finite_pixel_gives_a_nan_score_for_its_example_only(exported, case, batch, data, bad):
    model, loaded, tflite_dir = exported[case]
    x = np.random.default_rng(batch).random((batch, *IMAGE), dtype=np.float32)
    i = data.draw(st.integers(0, batch - 1), label="example")
    pixel = tuple(data.draw(st.integers(0, s - 1), label="pixel") for s in IMAGE)
    dirty = x.copy()
    dirty[(i, *pixel)] = bad
    others = np.arange(batch) != i

    clean = loaded.signatures["score"](x=tf.constant(x))["score"].numpy()
    got = loaded.signatures["score"](x=tf.constant(dirty))["score"].numpy()
    assert np.isfinite(clean).all()
    assert np.isnan(got[i]) and np.array_equal(got[others], clean[others])
    # the Keras model's score in a traced graph (what the signature exports) agrees
    traced = tf.function(model.score)(tf.constant(dirty)).numpy()
    assert np.isnan(traced[i]) and np.allclose(traced[others], clean[others], rtol=1e-5)
    for variant in TFLITE_VARIANTS:
        path = tflite_dir / f"score.{variant}.tflite"
        lite_clean = export.run_tflite(path, "score", x=x)["score"]
        lite = export.run_tflite(path, "score", x=dirty)["score"]
        assert np.isfinite(lite_clean).all(), variant
        assert np.isnan(lite[i]) and np.array_equal(lite[others], lite_clean[others]), (variant, lite, lite_clean)


def test_score_files_flag_with_builtin_ops_only(exported):
    """The NaN flag converts to TFLite builtins (EQUAL/SUB from is_finite, REDUCE_ALL, SELECT_V2): no Flex op."""
    for case in CASES:
        path = exported[case][2] / "score.fp32.tflite"
        ops = {name for name, _ in export.tflite_op_codes(path.read_bytes())}
        assert {"REDUCE_ALL", "SELECT_V2"} <= ops and export.non_builtin_ops(path.read_bytes()) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_nan_flag_does_not_rely_on_nan_propagation(case, monkeypatch):
    """Make the loss terms ignore x (finite whatever x holds), as a TFLite kernel may (RELU(NaN) = 0): the traced
    score, which the signature exports, must still be NaN for the example with a non-finite pixel."""
    from kerasae.models import ae, vae

    preset, overrides = CASES[case][:2]
    model = kerasae.build(preset, **overrides)
    zeros = lambda x, *args, **kwargs: tf.zeros(tf.shape(x)[:1])  # noqa: E731
    monkeypatch.setattr(ae.losses, "reconstruction_error", zeros)
    monkeypatch.setattr(vae.losses, "kl_to_standard_normal", lambda mean, log_var: zeros(mean))
    monkeypatch.setattr(vae.VAE, "log_likelihood", lambda self, x, logits: zeros(x))
    x = np.random.default_rng(0).random((3, *IMAGE), dtype=np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        dirty = x.copy()
        dirty[1, 3, 4, 0] = bad
        got = tf.function(model.score)(tf.constant(dirty)).numpy()
        assert np.isnan(got[1]) and np.array_equal(got[[0, 2]], [0.0, 0.0]), (bad, got)

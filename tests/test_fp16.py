"""kerasae.fp16: data-aware float16 rounding, the float32 layers it keeps, and the flatbuffer surgery."""

import keras
import numpy as np
import pytest

import kerasae
from kerasae import export, fp16
from kerasae.data import load_mnist


@pytest.fixture(scope="module")
def images():
    return load_mnist().take(2000, 64).x_train  # >= 2x the 784 inputs: GPTQ for every Dense kernel


@pytest.fixture(scope="module")
def model(images):
    keras.utils.set_random_seed(0)
    vae = kerasae.build("vae-mlp", hidden_units=(128, 64), latent_dim=8)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(images, batch_size=100, epochs=1, verbose=0)
    return vae


def _kernels(model):
    return {layer.name: layer.kernel.numpy() for net in (model.encoder, model.decoder) for layer in net.layers
            if isinstance(layer, keras.layers.Dense)}


def _max_error(copy, model, x):
    z = model.encode(x)[0]
    return max(float(np.abs(np.asarray(copy.reconstruct(x), np.float64) - np.asarray(model.reconstruct(x))).max()),
               float(np.abs(np.asarray(copy.decode(z), np.float64) - np.asarray(model.decode(z))).max()))


def test_gptq_rounding_is_float16_and_beats_nearest_on_the_input_distribution():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(8, 64))
    draw = lambda n: np.maximum(rng.normal(size=(n, 8)) @ mix, 0.0) * (np.arange(64) >= 4)  # noqa: E731
    x, fresh = draw(2000), draw(2000)  # correlated ReLU features, 4 dead inputs
    w = rng.normal(size=(64, 32)) * 0.05
    q = fp16.gptq_float16(w, x)
    assert q.dtype == np.float16 and q.shape == w.shape
    nearest = w.astype(np.float16)
    for data in (x, fresh):  # calibrated on x; holds on fresh draws of the same distribution
        err = lambda r: np.linalg.norm(data @ (r.astype(np.float64) - w))  # noqa: E731
        assert err(q) < 0.5 * err(nearest), (err(q), err(nearest))


def test_plan_keeps_float32_only_the_kernels_the_bound_needs(model, images):
    original = _kernels(model)
    copy, keep = fp16.plan(model, images, bound=1.0)
    assert keep == ()
    for name, kernel in _kernels(copy).items():
        np.testing.assert_array_equal(kernel, kernel.astype(np.float16).astype(np.float32), err_msg=name)
    rounded = _max_error(copy, model, images)
    assert 0 < rounded < 1e-3
    first = original["enc_dense_0"]
    nearest = first.astype(np.float16).astype(np.float32)
    assert np.mean(_kernels(copy)["enc_dense_0"] != nearest) > 0.01  # GPTQ moved some roundings
    few, _ = fp16.plan(model, images[:1000], bound=1.0)  # < 2 x 784 images: GPTQ would overfit them
    np.testing.assert_array_equal(_kernels(few)["enc_dense_0"], nearest)
    assert np.mean(_kernels(few)["enc_dense_1"] != original["enc_dense_1"].astype(np.float16)) > 0.01  # 128 inputs

    copy, keep = fp16.plan(model, images, bound=rounded / 4)
    assert 0 < len(keep) < len(original)
    assert _max_error(copy, model, images) <= 0.8 * rounded / 4
    for name, kernel in _kernels(copy).items():
        if name in keep:
            np.testing.assert_array_equal(kernel, original[name])
        else:
            np.testing.assert_array_equal(kernel, kernel.astype(np.float16).astype(np.float32), err_msg=name)

    copy, keep = fp16.plan(model, images, bound=0.0)
    assert set(keep) == set(original) and _max_error(copy, model, images) == 0.0


def test_keep_float32_restores_biases_and_named_layers(model, images, tmp_path):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    export.write_saved_model(model, tmp_path / "sm")
    f32 = export.convert_tflite(tmp_path / "sm", "decode", "fp32")
    f16 = export.convert_tflite(tmp_path / "sm", "decode", "fp16")
    z = np.asarray(model.encode(images[:64])[0])
    want = np.asarray(model.decode(z))

    def run(model_bytes):
        path = tmp_path / "m.tflite"
        path.write_bytes(model_bytes)
        return export.run_tflite(path, "decode", z=z)["x_mean"]

    def float16_constants(model_bytes):
        flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
        graph = flat.subgraphs[0]
        return sorted(graph.tensors[op.inputs[0]].name.decode() for op in graph.operators
                      if graph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT16)

    assert any("BiasAdd" in n for n in float16_constants(f16))  # the converter rounds biases too
    biases = fp16.keep_float32(f16, f32)
    left = float16_constants(biases)
    assert left and all("MatMul" in n and "BiasAdd" not in n for n in left)
    assert np.abs(run(biases) - want).max() <= 1e-3  # still float16 kernels: close, not exact

    layers = ("dec_dense_0", "dec_dense_1", "dec_out")
    full = fp16.keep_float32(f16, f32, layers)
    assert float16_constants(full) == []
    assert np.abs(run(full) - want).max() <= 1e-5
    assert len(f16) < len(biases) < len(full) <= 1.01 * len(f32)
    partial = fp16.keep_float32(f16, f32, ("dec_out",))
    assert [n for n in float16_constants(partial) if "dec_out" in n] == [] and len(float16_constants(partial)) == 2

    other = kerasae.build("vae-mlp", hidden_units=(128, 64), latent_dim=8)  # same graph, other weights
    export.write_saved_model(other, tmp_path / "other")
    with pytest.raises(ValueError, match="fp32_bytes: no float32 constant"):
        fp16.keep_float32(f16, export.convert_tflite(tmp_path / "other", "decode", "fp32"), layers)

"""Float16 TFLite weights that stay within the export contract's 1e-3 of float32.

Rounding every weight of a trained deep MLP to the nearest float16 moves its output pixels by
up to ~2e-3 (the 84.85-nat 784-512x3-50 VAE: 2.1e-3 on 256 test images), twice the bound.
`plan` brings a model under it at the least size cost it can find:

1. Data-aware rounding (GPTQ, Frantar et al. 2022, on the float16 grid): each Dense kernel is
   rounded one input row at a time, and each row's rounding error is pushed onto the rows not
   yet rounded, weighted by the inverse second moment of the layer's inputs on calibration
   images. The kernel stays exactly float16 (same file size) and its outputs on real inputs
   move about half as much. Layers go in order, each calibrated on what the already-rounded
   layers before it produce, so each also absorbs the error upstream. Conv kernels are
   rounded to nearest.
2. Biases (rank 1, a few KB) always stay float32. Then, while the calibration images' max
   output error (reconstruction and decode) is above `margin` x bound, the kernel whose return
   to float32 buys the largest error drop per weight goes back to float32.

`keep_float32` then swaps those tensors' DEQUANTIZE'd float16 constants in the converted file
for the float32 constants of the fp32 conversion (checked value by value).
"""

import re

import keras
import numpy as np


_ROUNDED = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def plan(model, images, bound, margin=0.8, damp=0.01, labels=None):
    """(copy of `model` with float16-rounded kernels, names of the layers to keep float32).

    `images` [N, H, W, C]: calibration inputs drawn from the training data (a few thousand: a
    Dense kernel gets GPTQ rounding only with at least 2x its input size of images, else nearest);
    a conditional model's `labels` [N] go with them. The copy holds the original float32 kernel
    for every layer in the returned names.
    """
    copy = model.clone()
    x = np.asarray(images, np.float32)
    extra = () if labels is None else (np.asarray(labels, np.int32),)  # a conditional model's second argument
    layers = [layer for net in (copy.encoder, copy.decoder) for layer in net.layers if isinstance(layer, _ROUNDED)]
    original = {layer.name: layer.kernel.numpy() for layer in layers}
    for net in (copy.encoder, copy.decoder):
        # what the net reads: its own kernels never change it, and the encoder is rounded before the decoder's codes
        net_input = _net_input(copy, net, x, extra)
        for layer in net.layers:
            # GPTQ fits the calibration images; with fewer than twice as many images as inputs it
            # overfits them (measured: 500 images, 784 inputs -> 2x the error on test images).
            if (isinstance(layer, keras.layers.Dense) and len(layer.input.shape) == 2
                    and len(x) >= 2 * layer.input.shape[1]):
                inputs = _layer_inputs(net, layer, net_input)
                layer.kernel.assign(gptq_float16(layer.kernel.numpy(), inputs, damp).astype(np.float32))
            elif isinstance(layer, _ROUNDED):
                layer.kernel.assign(layer.kernel.numpy().astype(np.float16).astype(np.float32))
    rounded = {layer.name: layer.kernel.numpy() for layer in layers}

    codes = model.latent_codes(x, *extra)
    want = (np.asarray(model.reconstruct(x, *extra), np.float64), np.asarray(model.decode(codes, *extra), np.float64))

    def error(keep):
        for layer in layers:
            layer.kernel.assign(original[layer.name] if layer.name in keep else rounded[layer.name])
        return max(float(np.abs(np.asarray(copy.reconstruct(x, *extra), np.float64) - want[0]).max()),
                   float(np.abs(np.asarray(copy.decode(codes, *extra), np.float64) - want[1]).max()))

    keep, err = set(), error(set())
    while err > margin * bound and len(keep) < len(layers):
        trials = {layer.name: error(keep | {layer.name}) for layer in layers if layer.name not in keep}
        gains = {name: (err - e) / original[name].size for name, e in trials.items()}
        name = max(gains, key=gains.get) if max(gains.values()) > 0 else min(trials, key=trials.get)
        keep.add(name)
        err = trials[name]
    error(keep)  # leave the copy holding the chosen kernels
    return copy, tuple(layer.name for layer in layers if layer.name in keep)


def _layer_inputs(net, layer, inputs, batch_size=1024):
    """What `layer` of `net` receives on x, computed eagerly in batches of `batch_size`.

    Not `keras.Model(net.inputs, layer.input).predict`: every such sub-model traces its own
    predict tf.function (twice with a smaller last batch), and TensorFlow counts all of them
    as one function retracing, since they share their Python code: from the fifth trace on
    it logged "N out of the last N calls to ... triggered tf.function retracing".
    """
    sub = keras.Model(net.inputs, layer.input)
    return np.concatenate([np.asarray(sub([t[i:i + batch_size] for t in inputs], training=False))
                           for i in range(0, len(inputs[0]), batch_size)])


def _net_input(model, net, x, extra=()):
    """The arrays `net` reads for images x: the encoder's (a conditional model's: with the one-hot labels), the
    decoder's the codes (a VAE's posterior means; a conditional model's beside the one-hot labels)."""
    one_hot = [np.eye(model.num_classes, dtype=np.float32)[extra[0]]] if extra else []
    if net is model.encoder:
        return [x, *one_hot]
    codes = model.latent_codes(x, *extra)
    return [np.concatenate([codes, *one_hot], axis=-1)] if one_hot else [codes]


def gptq_float16(kernel, inputs, damp=0.01):
    """Round `kernel` [in, out] to float16, minimizing |inputs @ kernel - inputs @ rounded| (GPTQ order)."""
    x = np.asarray(inputs, np.float64).reshape(len(inputs), -1)
    h = x.T @ x / len(x)
    dead = np.diag(h) == 0  # inputs that are always 0 (dead ReLUs): any rounding is exact on them
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    # Upper Cholesky factor of H^-1: row i says how the not-yet-rounded rows absorb row i's error.
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    w = np.asarray(kernel, np.float64).copy()
    out = np.empty(w.shape, np.float16)
    for i in range(len(w)):
        out[i] = w[i].astype(np.float16)
        err = (w[i] - out[i]) / u[i, i]
        w[i + 1:] -= np.outer(u[i, i + 1:], err)
    return out


def keep_float32(fp16_bytes, fp32_bytes, layer_names=()):
    """The fp16 .tflite with its rank-1 constants (biases) and `layer_names`' weights back in float32.

    `fp32_bytes` is the float32 conversion of the same SavedModel signature; each restored constant
    must round to exactly the float16 constant it replaces. A named layer's kernel without such a
    match is a ValueError (not the same network); a rank-1 constant without one (folded by the
    converter) stays float16.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    pattern = re.compile(r"(^|/)(" + "|".join(map(re.escape, layer_names)) + r")(_\d+)?/") if layer_names else None
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp16_bytes))
    reference = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32_bytes))
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    float16, float32 = schema.TensorType.FLOAT16, schema.TensorType.FLOAT32
    for graph, ref_graph in zip(model.subgraphs, reference.subgraphs, strict=True):
        constants = {t.name: reference.buffers[t.buffer].data for t in ref_graph.tensors
                     if t.type == float32 and reference.buffers[t.buffer].data is not None}
        redirect, operators = {}, []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            source = graph.tensors[op.inputs[0]]
            named = bool(pattern and pattern.search(source.name.decode()))
            if (max(code.builtinCode, code.deprecatedBuiltinCode) == dequantize and source.type == float16
                    and (len(source.shape) <= 1 or named)):
                half = np.frombuffer(bytes(model.buffers[source.buffer].data), np.float16)
                full = np.frombuffer(bytes(constants.get(source.name, b"")), np.float32)
                if full.shape != half.shape or not np.array_equal(full.astype(np.float16).view(np.uint16),
                                                                  half.view(np.uint16)):
                    if not named:  # a folded rank-1 constant without a counterpart: it stays float16
                        operators.append(op)
                        continue
                    raise ValueError(f"fp32_bytes: no float32 constant {source.name.decode()!r} matching the "
                                     "float16 one; pass the fp32 conversion of the same network")
                source.type = float32
                model.buffers[source.buffer].data = np.frombuffer(full.tobytes(), np.uint8)
                redirect[int(op.outputs[0])] = int(op.inputs[0])  # consumers read the float32 constant
                continue
            operators.append(op)
        for op in operators:
            op.inputs = np.array([redirect.get(int(i), int(i)) for i in op.inputs], np.int32)
        graph.operators = operators
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))

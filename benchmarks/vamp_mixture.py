"""The VampPrior's mixture density in float32: its error against float64 and the training step it costs.

    python benchmarks/vamp_mixture.py            # benchmarks/results/vamp_mixture.json
    python benchmarks/vamp_mixture.py --quick    # a smoke test of this script

Three forms of sum_d (z_d - m_kd)^2 / v_kd: "expanded_float32" (two float32 matmuls, z^2 p - 2 z m p + m^2 p;
kerasae's form before), "direct_float32" (the differences taken directly, an [N, K, D] tensor) and
`kerasae.losses.mixture_log_prob` ("kerasae": the expansion in float64). Accuracy: the max abs error against a
float64 numpy computation, K=500 components of D=40 dimensions at log-variances -3 ... -15, for codes drawn near
the components (log p ~ 10^2) and far from them (|log p| up to ~10^8, where float32 itself rounds by several
nats: "float32_rounding" is the error of the exact value rounded to float32). Time: one training step of
hvae-mlp-vamp (500 pseudo-inputs, batch 100) with each form, and the density with its gradient alone on the codes
of a training step (100) and of an importance-weighted evaluation chunk (25,000; not direct_float32, 2 GB).
"""

import argparse
import sys

import _common

K, D = 500, 40
LOG_VARIANCES = (-3, -6, -9, -12, -15)


def expanded_mixture_log_prob(tf, z, means, log_vars):
    """The expanded-square form (the reference the direct form replaced), float32."""
    import math

    z, means, log_vars = (tf.cast(t, tf.float32) for t in (z, means, log_vars))
    flat = tf.reshape(z, [-1, z.shape[-1]])
    inv = tf.exp(-log_vars)
    quadratic = (tf.matmul(tf.square(flat), inv, transpose_b=True)
                 - 2.0 * tf.matmul(flat, means * inv, transpose_b=True) + tf.reduce_sum(tf.square(means) * inv, -1))
    log_n = -0.5 * (quadratic + tf.reduce_sum(log_vars, -1)) - z.shape[-1] * 0.5 * math.log(2 * math.pi)
    return tf.reshape(tf.reduce_logsumexp(log_n, 1) - math.log(means.shape[0]), tf.shape(z)[:-1])


def direct_mixture_log_prob(tf, z, means, log_vars):
    """The differences taken directly in float32 ([N, K, D] at once)."""
    import math

    z, means, log_vars = (tf.cast(t, tf.float32) for t in (z, means, log_vars))
    flat = tf.reshape(z, [-1, z.shape[-1]])
    quadratic = tf.reduce_sum(tf.square(flat[:, None] - means) * tf.exp(-log_vars), -1)
    log_n = -0.5 * (quadratic + tf.reduce_sum(log_vars, -1)) - z.shape[-1] * 0.5 * math.log(2 * math.pi)
    return tf.reshape(tf.reduce_logsumexp(log_n, 1) - math.log(means.shape[0]), tf.shape(z)[:-1])


def forms(tf, losses):
    return {"expanded_float32": lambda z, m, lv: expanded_mixture_log_prob(tf, z, m, lv),
            "direct_float32": lambda z, m, lv: direct_mixture_log_prob(tf, z, m, lv),
            "kerasae": losses.mixture_log_prob}


def float64_mixture_log_prob(np, z, means, log_vars):
    from scipy.special import logsumexp

    z, means, log_vars = (np.asarray(t, np.float64) for t in (z, means, log_vars))
    log_n = -0.5 * (((z[:, None, :] - means) ** 2 * np.exp(-log_vars)).sum(-1) + log_vars.sum(-1)
                    + means.shape[1] * np.log(2 * np.pi))
    return logsumexp(log_n, axis=1) - np.log(len(means))


def accuracy(np, tf, losses, rows):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D)).astype(np.float32)
    out = {}
    for lv in LOG_VARIANCES:
        log_vars = (lv + rng.uniform(-0.5, 0.5, size=(K, D))).astype(np.float32)
        pick = rng.integers(0, K, rows)
        near = means[pick] + np.exp(0.5 * log_vars[pick]) * rng.normal(size=(rows, D))
        far = rng.normal(scale=1.5, size=(rows, D))
        row = {}
        for where, z in (("near", near.astype(np.float32)), ("far", far.astype(np.float32))):
            exact = float64_mixture_log_prob(np, z, means, log_vars)
            row[where] = {form: float(np.abs(fn(z, means, log_vars).numpy() - exact).max())
                          for form, fn in forms(tf, losses).items()}
            row[where]["float32_rounding"] = float(np.abs(exact.astype(np.float32) - exact).max())
            row[where]["max_abs_log_p"] = float(np.abs(exact).max())
        out[str(lv)] = row
        _common.log(f"log-variance {lv}: {row}")
    return out


def step_times(np, tf, kerasae, losses, optimizers, steps):
    x = (np.random.default_rng(1).uniform(size=(100, 28, 28, 1)) > 0.5).astype(np.float32)
    out = {}
    original = losses.mixture_log_prob
    for form, fn in forms(tf, losses).items():
        losses.mixture_log_prob = fn  # the models call it through the module
        try:
            model = kerasae.build("hvae-mlp-vamp", seed=0)
            model.compile(optimizer=optimizers.Adam(1e-3))
            out[form] = _common.latency_summary(_common.time_calls(lambda: model.train_on_batch(x), steps, warmup=3))
        finally:
            losses.mixture_log_prob = original
        _common.log(f"hvae-mlp-vamp training step, {form}: {out[form]['median']} ms")
    return out


def density_times(np, tf, losses, calls):
    rng = np.random.default_rng(2)
    means = tf.Variable(rng.normal(size=(K, D)).astype(np.float32))
    log_vars = rng.normal(size=(K, D)).astype(np.float32)
    out = {}
    for rows in (100, 25_000):
        z = tf.constant(rng.normal(size=(rows, D)).astype(np.float32))
        timed = {}
        for form, fn in forms(tf, losses).items():
            if form == "direct_float32" and rows > 1000:
                continue  # [25,000, 500, 40] at once: 2 GB and ~30 s a call

            @tf.function
            def with_gradient(z, fn=fn):
                with tf.GradientTape() as tape:
                    total = tf.reduce_sum(fn(z, means, log_vars))
                return tape.gradient(total, means)

            timed[form] = _common.latency_summary(_common.time_calls(lambda: with_gradient(z), calls))
        out[str(rows)] = timed
        _common.log(f"density and gradient of {rows} codes: " + ", ".join(
            f"{form} {v['median']} ms" for form, v in out[str(rows)].items()))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few rows and steps")
    parser.add_argument("--steps", type=_common.positive_int, default=None, help="timed training steps per form")
    args = _common.parse_args(parser, argv, lambda a: {"steps": 3 if a.quick else 30}, "vamp_mixture.json")
    _common.setup_imports()
    import numpy as np
    import tensorflow as tf

    import kerasae
    from kerasae import losses, optimizers

    result = _common.header("vamp_mixture", args, args.quick)
    result["tensorflow_threads"] = _common.tensorflow_threads(tf)
    result["components"] = {"K": K, "D": D}
    result["max_abs_error_vs_float64_nats"] = accuracy(np, tf, losses, 50 if args.quick else 1000)
    result["hvae_mlp_vamp_training_step_ms"] = step_times(np, tf, kerasae, losses, optimizers, args.steps)
    result["density_and_gradient_ms"] = density_times(np, tf, losses, 3 if args.quick else 20)
    out = _common.write_result(args.out, result)
    print("\n".join(_common.report_header(result, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

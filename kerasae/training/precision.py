"""The floating-point policy a run trains in, `TrainConfig.precision`, and why it was chosen.

- "float32": every layer in float32 (the default: bfloat16 has not yet been shown to reach float32's test NLL
  and bits/dim on a CPU with bfloat16 matrix instructions; see docs/performance.md).
- "bfloat16": Keras' mixed_bfloat16 (bfloat16 compute, float32 variables; kerasae's losses, KL and log-sum-exp
  sums stay float32). Fast only where the CPU has bfloat16 matrix instructions (AMX, AVX512-BF16) or on a
  GPU/TPU; elsewhere TensorFlow emulates it.
- "float16": mixed_float16 with loss scaling, for GPUs' tensor cores.
- "auto": bfloat16 on a CPU with bfloat16 matrix instructions and no GPU, float32 otherwise.

`TrainConfig.mixed_precision=True` (`--mixed-precision`) is the older spelling of "float16 on a GPU, bfloat16
elsewhere".
"""

from contextlib import contextmanager
from pathlib import Path

from kerasae.options import PRECISIONS  # noqa: F401  (the choices, checked without TensorFlow)

#: /proc/cpuinfo flags of bfloat16 matrix instructions: Intel AMX, and AVX512-BF16 (Intel Cooper Lake and later,
#: AMD Zen 4 and later).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def cpu_flags(cpuinfo=None):
    """The set of CPU flags in /proc/cpuinfo (or in the text `cpuinfo`); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def choose(precision="float32", mixed_precision=False, gpu=None, flags=None):
    """{"asked", "policy" (a Keras dtype policy name), "why"}. `gpu` (bool) and `flags` (CPU flags) default to
    this machine's."""
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_logical_devices("GPU"))
    if mixed_precision:
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
        return {"asked": "mixed_precision", "policy": policy,
                "why": "--mixed-precision: float16 on a GPU, bfloat16 elsewhere"}
    if precision != "auto":
        return {"asked": precision, "policy": _POLICIES[precision], "why": "as asked"}
    bf16 = sorted(set(BF16_FLAGS) & (cpu_flags() if flags is None else set(flags)))
    if gpu:
        return {"asked": "auto", "policy": "float32",
                "why": "auto chooses bfloat16 only on a CPU without a GPU; ask for float16 for a GPU's tensor cores"}
    if bf16:
        return {"asked": "auto", "policy": "mixed_bfloat16",
                "why": f"this CPU has bfloat16 matrix instructions ({', '.join(bf16)})"}
    return {"asked": "auto", "policy": "float32",
            "why": f"this CPU has no bfloat16 matrix instructions ({' or '.join(BF16_FLAGS)})"}


@contextmanager
def global_policy(policy):
    """Keras' process-wide dtype policy set to `policy` inside the block (models made there keep it in their
    layers, and save it), and back to what it was after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def describe(choice):
    """One log line: the policy and why."""
    return f"precision: {choice['policy']} ({choice['asked']}: {choice['why']})"

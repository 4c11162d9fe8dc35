"""MirroredStrategy on 2 CPU replicas trains exactly like one device (loss scaling, metrics, noise)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("preset", ["ae-shallow", "dae-mlp", "vae-mlp", "iwae-mlp", "hvae-mlp-vamp", "cvae-mlp",
                                    "vqvae-mlp"])
def test_mirrored_matches_single_device(preset):
    proc = subprocess.run([sys.executable, str(HERE / "mirrored_check.py"), preset], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_weight_change"] > 1e-4  # it trained ...
    assert result["max_weight_diff"] < 1e-5    # ... to the same weights (SGD: a mis-scaled loss would show)
    single, mirrored = result["history_single"], result["history_mirrored"]
    assert set(single) == set(mirrored)
    for name in single:  # logged loss, KL, ELBO... are global means, not per-replica or summed values
        np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-5, err_msg=name)


def test_strategy_choice():
    from kerasae import distribute

    assert distribute.get_strategy("default").num_replicas_in_sync == 1
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1  # no GPUs here
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.get_strategy("parameter_server")


def test_mirrored_runs_the_real_training_path():
    """kerasae.train under MirroredStrategy, several steps per call: with one iterator (whole executions,
    kerasae's own train function) and with per-epoch iterators (one step per call), against one device;
    then another model in the same process, sets smaller than a batch that split unevenly across the replicas,
    and XLA with replicas (refused).

    The batches differ from the single-device run's (tf.distribute re-creates the seeded shuffle and
    binarization streams), so the histories agree loosely; a loss mis-scaled by the replica count
    would be off by 2x. The exact single-device match is test_mirrored_matches_single_device's."""
    proc = subprocess.run([sys.executable, str(HERE / "mirrored_check.py"), "train", "vae-mlp"], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {"whole-default": (1, True, 4, 16), "whole-mirrored": (2, True, 4, 16),
                "partial-default": (1, False, 4, 18), "partial-mirrored": (2, False, 1, 18)}
    for name, (replicas, one_iterator, per_call, iterations) in expected.items():
        run = runs[name]
        assert (run["replicas"], run["one_iterator"], run["steps_per_execution"], run["iterations"]) == (
            replicas, one_iterator, per_call, iterations), name
        assert set(run["test"]) == {"loss", "reconstruction_loss", "kl", "elbo"}, name  # empty if fit's test function were reused
        assert all(np.isfinite(v) for v in run["test"].values()), name
    for path in ("whole", "partial"):
        single, mirrored = runs[f"{path}-default"], runs[f"{path}-mirrored"]
        assert mirrored["history"][-1]["loss"] < mirrored["history"][0]["loss"]  # it trained
        for row_single, row_mirrored in zip(single["history"], mirrored["history"], strict=True):
            for key in ("loss", "val_loss", "reconstruction_loss"):
                assert row_mirrored[key] == pytest.approx(row_single[key], rel=1e-2), (path, key)
        assert mirrored["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-2), path
    # a second model, other shapes, same process: a second MirroredStrategy would number its all-reduces
    # from the same keys and fail with "Shape mismatch in the collective instance"
    assert runs["other-model"]["replicas"] == 2 and np.isfinite(runs["other-model"]["test"]["loss"])
    uneven = runs["uneven"]  # Keras' build from a first batch split 14/13 failed in an AddN of unequal shapes
    assert uneven["replicas"] == 2 and len(uneven["history"]) == 2 and np.isfinite(uneven["test"]["loss"])
    assert all(np.isfinite(row[key]) for row in uneven["history"] for key in ("loss", "val_loss"))
    assert runs["jit_error"] is not None and "jit_compile" in runs["jit_error"] and "2 replicas" in runs["jit_error"]

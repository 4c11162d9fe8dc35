"""MirroredStrategy on 2 CPU replicas trains exactly like one device (loss scaling, metrics, noise)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("preset", ["ae-shallow", "dae-mlp", "vae-mlp", "iwae-mlp"])
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

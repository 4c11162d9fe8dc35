"""Multi-worker training: two worker processes on 127.0.0.1, configured by TF_CONFIG, through scripts/train.py."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO



def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(workers, index, args, cwd, command=None):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
    command = command or [str(REPO / "scripts" / "train.py"), "--strategy", "multiworker", *args]
    return subprocess.Popen([sys.executable, *command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _cluster():
    return [f"127.0.0.1:{p}" for p in _free_ports(2)]


def _digest(stdout):
    return next(line.split(": ")[1] for line in stdout.splitlines() if line.startswith("weights sha256: "))


def _write_indexed_images(folder, count):
    """`count` 4x4 grayscale PNGs whose pixels all equal the image's index (mod 256)."""
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((4, 4), i % 256, np.uint8)).save(folder / f"{i:03d}.png")


def test_two_workers_split_streamed_files_so_each_image_is_read_once_per_epoch(tmp_path):
    count, batch = 41, 8  # 41 = 5 x 8 + 1: the last batch is too small for two workers and joins the one before
    _write_indexed_images(tmp_path / "train", count)
    _write_indexed_images(tmp_path / "test", 2)
    workers = _cluster()
    script = str(REPO / "tests" / "multiworker_data_check.py")
    procs = [_launch(workers, i, [], tmp_path, command=[script, str(tmp_path), str(batch), "2"]) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert [s["workers"] for s in seen] == [2, 2]
    orders = []
    for epoch in range(2):
        steps = [s["epochs"][epoch] for s in seen]
        assert len(steps[0]) == len(steps[1]) == count // batch  # lockstep: the same number of steps
        assert all(len(images) >= 1 for worker in steps for images in worker)  # no empty batch
        everything = sorted(i for worker in steps for images in worker for i in images)
        assert everything == list(range(count))  # every image exactly once across the workers
        orders.append([i for step in zip(*steps) for images in step for i in images])
    assert orders[0] != orders[1]  # reshuffled each epoch


@pytest.mark.slow
def test_two_workers_read_only_their_own_record_shards(tmp_path):
    """4 train shards of 5 records (pixel value = index), global batch 4: worker w reads shards w and w + 2 only."""
    import tensorflow as tf

    def record(i):
        png = tf.io.encode_png(np.full((4, 4, 1), i, np.uint8)).numpy()
        return tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))})).SerializeToString()

    (tmp_path / "rec").mkdir()
    for name, values in [(f"train-{s}.tfrecord", range(5 * s, 5 * s + 5)) for s in range(4)] + [
            ("test.tfrecord", (200, 201))]:
        with tf.io.TFRecordWriter(str(tmp_path / "rec" / name)) as writer:
            for i in values:
                writer.write(record(i))
    workers = _cluster()
    script = str(REPO / "tests" / "multiworker_data_check.py")
    procs = [_launch(workers, i, [], tmp_path, command=[script, f"tfrecord:{tmp_path / 'rec'}", "4", "2"])
             for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    own = [set(range(0, 5)) | set(range(10, 15)), set(range(5, 10)) | set(range(15, 20))]
    for worker in (0, 1):
        for epoch in seen[worker]["epochs"]:
            assert [len(images) for images in epoch] == [2] * 5  # half of each global batch, 20 / 4 = 5 steps
            assert sorted(i for images in epoch for i in images) == sorted(own[worker])  # its records, once
    assert seen[0]["epochs"][0] != seen[0]["epochs"][1]  # reshuffled each epoch


def test_two_workers_train_in_lockstep_on_streamed_files_and_only_the_chief_writes(tmp_path):
    _write_indexed_images(tmp_path / "images" / "train", 300)
    _write_indexed_images(tmp_path / "images" / "test", 20)
    workers = _cluster()
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    data = ["--dataset", f"images:{tmp_path / 'images'}", "--data-mode", "stream", "--batch-size", "64"]
    procs = [_launch(workers, i, ["--preset", "ae-shallow", *data, "--epochs", "2", "--verbose", "2",
                                  "--out", outs[i]], tmp_path) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    assert _digest(results[0][0]) == _digest(results[1][0])  # bit-identical weights on both workers
    for name in ("config.json", "metrics.json", "model.keras", "best.keras", "history.csv", "figures/samples.png"):
        assert (outs[0] / name).is_file(), name
    assert [p for p in outs[1].rglob("*")] == []  # the non-chief wrote nothing
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["epochs"] == 2 and metrics["streamed"]
    assert metrics["weights_sha256"] == _digest(results[0][0])


@pytest.mark.slow
def test_a_dead_worker_fails_the_other_clearly_and_a_rerun_resumes(tmp_path):
    workers = _cluster()
    out = tmp_path / "run"  # shared by both workers, as --out must be for resuming
    args = ["--preset", "vae-mlp", "--max-train-samples", "6000", "--max-test-samples", "256", "--epochs", "4",
            "--verbose", "2", "--out", str(out)]
    chief, worker = (_launch(workers, i, args, tmp_path) for i in range(2))
    meta = out / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not (meta.exists() and json.loads(meta.read_text())["epoch"] >= 1):
        assert time.time() < deadline and chief.poll() is None, "no epoch finished in time"
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(worker.pid, signal.SIGKILL)
    killed = time.time()
    worker.communicate()
    _, err = chief.communicate(timeout=300)
    assert chief.returncode == 1, err[-3000:]
    assert time.time() - killed < 150  # no hang: within the collective timeout
    assert "a peer worker died or stopped answering" in err.strip().splitlines()[-1]
    resume_at = json.loads(meta.read_text())["epoch"]
    assert 1 <= resume_at < 4 and not (out / "model.keras").exists()

    workers = _cluster()
    procs = [_launch(workers, i, args, tmp_path) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
        assert f"after epoch {resume_at}" in stdout
    assert _digest(results[0][0]) == _digest(results[1][0])
    with open(out / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == resume_at

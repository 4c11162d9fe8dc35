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
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))  # this copy
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


TINY = ["--preset", "ae-shallow", "--max-train-samples", "256", "--max-test-samples", "64", "--validation-size", "64",
        "--epochs", "1", "--batch-size", "64"]


def _finish(procs, timeout):
    """Each worker's (returncode, stdout, stderr); one still running after `timeout` s is killed (returncode None)."""
    deadline, results = time.time() + timeout, []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1, deadline - time.time()))
            results.append((proc.returncode, out, err))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            results.append((None, out, err))
    return results


def _run_dir_check(workers, index, slow, delay, args, cwd):
    script = str(REPO / "tests" / "multiworker_run_dir_check.py")
    return _launch(workers, index, [], cwd, command=[script, str(slow), str(delay), "--strategy", "multiworker",
                                                    *args])


@pytest.mark.slow
def test_with_overwrite_only_the_chief_replaces_the_shared_out_and_the_other_worker_waits_for_it(tmp_path):
    """The chief's replacing of --out is slowed down (6 s): the other worker must neither rename nor delete the run
    meanwhile, nor go on before the chief is done (to read the old run's backup, which it has not put aside yet)."""
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)  # an old interrupted run of another config, in the shared --out
    (out / "config.json").write_text(json.dumps({"train": {"preset": "vae-mlp", "epochs": 9}}))
    (out / "model.keras").write_bytes(b"old")
    (out / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "weights": "epoch-1.weights.h5"}))
    (out / "backup" / "epoch-1.weights.h5").write_bytes(b"old")
    workers = _cluster()
    args = [*TINY, "--verbose", "2", "--out", str(out), "--overwrite"]
    procs = [_run_dir_check(workers, i, 0, 6, args, tmp_path) for i in range(2)]
    results = _finish(procs, 300)
    for code, stdout, err in results:
        assert code == 0, err[-3000:]
        assert "Resuming" not in stdout
    chief, other = (json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results)
    (aside,) = [c for c in chief["calls"] if c[:2] == ["rename", str(out)]]  # the chief put the old run aside
    assert [c for c in other["calls"] if c[1].startswith(str(tmp_path))] == []  # the other touched nothing of it
    assert other["prepared"] > aside[-1]  # and went on only once the chief's (slowed) replacing was done
    assert _digest(results[0][1]) == _digest(results[1][1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 0 and metrics["epochs"] == 1 and metrics["replicas"] == 2
    assert (out / "model.keras").read_bytes() != b"old" and not (out / "backup").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run deleted, nothing left aside


@pytest.mark.slow
def test_a_chief_that_cannot_prepare_out_fails_the_other_worker_at_once(tmp_path):
    (tmp_path / "file").write_text("")
    outs = [tmp_path / "file" / "run", tmp_path / "worker1"]  # the chief's --out cannot be made
    workers = _cluster()
    procs = [_launch(workers, i, [*TINY, "--verbose", "0", "--out", str(outs[i])], tmp_path) for i in range(2)]
    (chief, worker) = _finish(procs, 150)  # a worker left waiting for the chief would time out after 120 s
    assert chief[0] == 2 and "cannot write to run directory" in chief[2].strip().splitlines()[-1], chief[2][-3000:]
    assert worker[0] == 2, worker[2][-3000:]
    assert "the chief worker could not prepare the run directory" in worker[2].strip().splitlines()[-1]


@pytest.mark.slow
def test_a_finished_run_is_the_chiefs_answer_and_a_worker_without_it_says_so(tmp_path):
    """The chief's --out holds a finished run of the command, the other worker's is empty (not shared): the chief
    reports the run, the other is refused at once (it used to train, waiting for a chief that had exited)."""
    from kerasae.cli.train import build_train_parser, config_from_args

    outs = [tmp_path / "chief", tmp_path / "worker1"]
    parser = build_train_parser()
    args = [[*TINY, "--verbose", "0", "--out", str(out)] for out in outs]
    config = config_from_args(parser, parser.parse_args(["--strategy", "multiworker", *args[0]]))
    outs[0].mkdir()
    (outs[0] / "config.json").write_text(json.dumps({"train": config.to_json()}))
    (outs[0] / "metrics.json").write_text(json.dumps({"epochs": 1, "test": {"loss": 123.5}}))
    (outs[0] / "model.keras").write_bytes(b"not loaded to report it")
    workers = _cluster()
    procs = [_launch(workers, i, args[i], tmp_path) for i in range(2)]
    (chief, worker) = _finish(procs, 150)
    assert worker[0] == 2, worker[2][-3000:]  # None: still waiting for the chief when killed
    assert "the chief's --out holds this finished run" in worker[2].strip().splitlines()[-1]
    assert not outs[1].exists()
    assert chief[0] == 0, chief[2][-3000:]
    (line,) = chief[1].splitlines()
    assert line.startswith(f"{outs[0]} already holds this finished run (1 epochs; test: loss 123.5); --overwrite")

"""Faults: disk full or permission denied while writing checkpoints and exports, kill -9 at random points of
repeated writes, and truncated, corrupted or unsafe .keras files.

Write faults are simulated three ways where the machine allows: the writer patched to write half a file and raise
ENOSPC (always); a read-only directory (chmod 555 as a normal user; as root, who ignores permissions, a tmpfs
remounted read-only); a real tiny tmpfs that fills up (root only, where mount works). After a failed write the
earlier outputs must be byte-identical.

Needs: the tmpfs cases (a full disk, and read-only as root) need root and `mount -t tmpfs`, as in CI, which
runs as root; elsewhere they are skipped with the reason, and the patched-writer and chmod cases still run.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import kerasae
from kerasae import cli, evaluate, export, files, training

from conftest import REPO

AS_ROOT = os.geteuid() == 0
CAUSES = {"enospc": "No space left on device", "tmpfs": "No space left on device",
          "readonly": "Read-only file system" if AS_ROOT else "Permission denied"}


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return kerasae.build("ae-shallow", latent_dim=8)


def _snapshot(root):
    """{relative path: sha256} of every file under root, hidden ones included."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _shift_weights(model, by):
    model.set_weights([w + by for w in model.get_weights()])


def _mount_tmpfs(path, size_bytes):
    path.mkdir(parents=True, exist_ok=True)
    if not AS_ROOT or not shutil.which("mount"):
        pytest.skip("a tiny tmpfs needs root and mount (CI runs as root)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def fault(request, monkeypatch, tmp_path):
    """(kind, where, break_writes): write the earlier outputs into `where`, then call `break_writes()`; from then
    on writes there fail as `kind` says (enospc: keras.Model.save/save_weights write half a file and raise ENOSPC;
    readonly: the directory or its mount is read-only; tmpfs: the next full-size write does not fit)."""
    kind = request.param
    where = tmp_path / "out"
    mounted = False
    if kind == "tmpfs":
        _mount_tmpfs(where, 128 * 1024)  # room for one tiny model file (75 KB), not for a second
        mounted = True
    elif kind == "readonly" and AS_ROOT:  # root ignores chmod: a mount it can make read-only instead
        _mount_tmpfs(where, 16 << 20)
        mounted = True
    where.mkdir(exist_ok=True)
    locked = []

    def break_writes():
        if kind == "enospc":
            for method in ("save", "save_weights"):
                real = getattr(keras.Model, method)

                def half_then_enospc(self, filepath, *args, _real=real, **kwargs):
                    _real(self, filepath, *args, **kwargs)  # the real writer, then lose its second half
                    data = Path(filepath).read_bytes()
                    Path(filepath).write_bytes(data[:len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

                monkeypatch.setattr(keras.Model, method, half_then_enospc)
        elif kind == "readonly" and AS_ROOT:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        elif kind == "readonly":
            for d in [where, *[p for p in where.rglob("*") if p.is_dir()]]:
                d.chmod(0o555)
                locked.append(d)
        # tmpfs: nothing to do, the next full-size write does not fit

    yield kind, where, break_writes
    for d in locked:
        d.chmod(0o755)
    if mounted:
        subprocess.run(["umount", str(where)], check=False)


# ---- disk full / permission denied while writing a checkpoint ---------------------------------------

def _write_checkpoint(model, run_dir, writer, epoch):
    """One real write of model.keras, best.keras (the training callback) or the backup (the training callback)."""
    if writer == "model.keras":
        training.save_model_atomic(model, run_dir / "model.keras")
    elif writer == "best.keras":
        callback = training.AtomicModelCheckpoint(str(run_dir / "best.keras"), save_best_only=True,
                                                  monitor="val_loss")
        callback.set_model(model)
        callback.on_epoch_end(epoch, {"val_loss": 100.0 - epoch})  # a new best every epoch
    else:
        callback = training.AtomicBackupAndRestore(str(run_dir / "backup"))
        callback.set_model(model)
        model.stop_training = False  # as inside fit
        callback._current_epoch, callback._last_batch_seen = epoch, 0
        callback._save_model()


def _load_checkpoint(run_dir, writer):
    if writer != "backup":
        return files.load_keras_model(run_dir / writer)
    state = json.loads((run_dir / "backup" / "training_metadata.json").read_text())
    model = kerasae.build("ae-shallow", latent_dim=8)
    model.load_weights(run_dir / "backup" / state["weights"])
    return model


@pytest.mark.parametrize("fault", ["enospc", "readonly", "tmpfs"], indirect=True)
@pytest.mark.parametrize("writer", ["model.keras", "best.keras", "backup"])
def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tiny, fault, writer):
    kind, run_dir, break_writes = fault
    model = kerasae.build("ae-shallow", latent_dim=8)
    model.set_weights(tiny.get_weights())
    _write_checkpoint(model, run_dir, writer, epoch=1)
    before = _snapshot(run_dir)
    assert before, "nothing was written before the fault"
    _shift_weights(model, 1.0)  # the next write would change the file
    break_writes()
    with pytest.raises(OSError) as info:
        _write_checkpoint(model, run_dir, writer, epoch=2)
    message = str(info.value)
    assert str(run_dir) in message and CAUSES[kind] in message, message
    assert "unchanged" in message or "no file was written" in message
    assert _snapshot(run_dir) == before  # byte-identical; no temporary file left behind
    restored = _load_checkpoint(run_dir, writer)
    for got, want in zip(restored.get_weights(), tiny.get_weights()):
        np.testing.assert_array_equal(got, want)


# ---- disk full / permission denied while exporting ----------------------------------------------------

@pytest.fixture(scope="module")
def first_export(tiny, tmp_path_factory):
    """exported/t/1 + tflite/ (fp32 decode) of the tiny model, made once; tests copy it."""
    base = tmp_path_factory.mktemp("export") / "exported"
    export.export_model(tiny, base, "t", tflite=("fp32",), tflite_signatures=("decode",))
    return base


def _export_size(root):
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


@pytest.mark.parametrize("fault", ["enospc", "readonly", "tmpfs"], indirect=True)
def test_a_failed_export_names_the_target_and_keeps_earlier_versions(tiny, first_export, fault, monkeypatch):
    kind, base, break_writes = fault
    if kind == "tmpfs":  # remount: room for the first export and a bit, not for a second one
        subprocess.run(["umount", str(base)], check=True)
        _mount_tmpfs(base, int(_export_size(first_export) * 1.4) // 4096 * 4096)
    shutil.copytree(first_export / "t", base / "t")
    before = _snapshot(base)
    if kind == "enospc":
        real = export.write_saved_model

        def half_then_enospc(model, path):
            real(model, path)
            (Path(path) / "variables" / "variables.data-00000-of-00001").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(export.core, "write_saved_model", half_then_enospc)  # where export_model looks it up
    else:
        break_writes()
    with pytest.raises((export.ExportError, ValueError)) as info:
        export.export_model(tiny, base, "t", tflite=("fp32",), tflite_signatures=("decode",))
    message = str(info.value)
    assert CAUSES[kind] in message, message
    if isinstance(info.value, export.ExportError):  # failed while writing: names the version it was making
        assert str(base / "t" / "2") in message and "nothing was committed" in message
    else:  # could not even start (read-only): names the directory, a usage error (exit 2 on the CLI)
        assert kind == "readonly" and message.startswith(f"export_dir: cannot write to {base / 't'}")
    assert _snapshot(base) == before and export.existing_versions(base / "t") == [1]
    assert export.verify(base / "t") == []


def test_export_cli_reports_a_full_disk_and_exits_1(tiny, tmp_path, monkeypatch, capsys):
    tiny.save(tmp_path / "tiny.keras")

    def enospc(model, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(export.core, "write_saved_model", enospc)  # where export_model looks it up
    code = cli.export_main([str(tmp_path / "tiny.keras"), "--name", "t", "--export-dir", str(tmp_path / "exp"),
                            "--tflite", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("export.py: export failed: ") and "No space left on device" in err[0]
    assert str(tmp_path / "exp" / "t" / "1") in err[0] and not (tmp_path / "exp").exists()


# ---- kill -9 at random points of repeated writes --------------------------------------------------------

#: A zygote: imports kerasae once (TensorFlow's import is the slow part), then per "go N" line forks a writer,
#: prints its pid and waits for it. The writer builds the tiny model and writes over and over: "checkpoint":
#: save_model_atomic(model, latest.keras) with every weight = the write's number (a file mixing two writes
#: would show); "export": export_model (new versions, tflite/ swapped each time). After each write it appends
#: the write's number to the progress file. Forking before any TF op runs is safe; each writer starts at once.
ZYGOTE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import kerasae
    from kerasae import export, training

    what, out, progress = sys.argv[1:4]
    for line in sys.stdin:
        start = int(line.split()[1])
        pid = os.fork()
        if pid == 0:
            model = kerasae.build("ae-shallow", latent_dim=8, seed=0)
            i = start
            while True:
                i += 1
                if what == "checkpoint":
                    model.set_weights([np.full(w.shape, i, w.dtype) for w in model.get_weights()])
                    training.save_model_atomic(model, os.path.join(out, "latest.keras"))
                else:
                    i = int(export.export_model(model, out, "k", tflite=("fp32",),
                                                tflite_signatures=("decode",)).name)
                with open(progress, "a") as f:
                    f.write(f"{i}\\n")
        print(pid, flush=True)
        os.waitpid(pid, 0)
""")


@pytest.mark.slow
@pytest.mark.parametrize("what, trials, max_delay", [("checkpoint", 4, 1.0), ("export", 2, 4.0)])
def test_kill_9_at_random_points_never_leaves_a_corrupt_latest(tmp_path, what, trials, max_delay):
    out, progress, zygote_py = tmp_path / "out", tmp_path / "progress", tmp_path / "zygote.py"
    out.mkdir()
    zygote_py.write_text(ZYGOTE)
    rng = random.Random(8)  # seeded: the same kill delays every run
    zygote = subprocess.Popen([sys.executable, str(zygote_py), what, str(out), str(progress)], cwd=REPO,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pid = None
    try:
        for trial in range(trials):
            progress.write_text("")
            zygote.stdin.write(f"go {trial * 1000}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            deadline = time.time() + 240
            while not progress.read_text().split():  # one complete write in this trial...
                assert time.time() < deadline, "the writer made no progress in time"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, max_delay))  # ...then a kill at a random point of what follows
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)  # reaped by the zygote
            done = [int(v) for v in progress.read_text().split()]
            visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            if what == "checkpoint":
                # half-written files only ever under a hidden name
                assert visible == ["latest.keras", "latest.keras.sha256.json"], visible
                weights = files.load_keras_model(out / "latest.keras").get_weights()  # sha256, CRC, safe_mode
                values = {float(v) for w in weights for v in np.unique(w)}
                assert len(values) == 1, f"latest.keras mixes writes: {sorted(values)[:5]}"
                assert values.pop() in (max(done), max(done) + 1)  # the last write, or one renamed at the kill
            else:
                assert visible == ["k"]
                names = sorted(p.name for p in (out / "k").iterdir() if not p.name.startswith("."))
                versions = export.existing_versions(out / "k")
                assert names == sorted([*map(str, versions), "tflite"]) and max(done) in versions, names
                assert export.verify(out / "k") == []  # every version and tflite/ complete, sha256 as listed
                manifest = json.loads((out / "k" / "tflite" / "manifest.json").read_text())
                assert manifest["version"] in versions
    finally:
        if pid is not None:  # a failed check: the writer may still be running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        zygote.stdin.close()  # the zygote ends when its stdin does
        try:
            zygote.wait(timeout=60)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait()


# ---- truncated, corrupted and unsafe .keras files ---------------------------------------------------------

def _corruptions(data, seed=0):
    """(label, bytes): truncations, and single-byte flips at seeded positions plus in each zip member's data."""
    yield "empty", b""
    for n in (1, 22, len(data) // 3, len(data) // 2, len(data) - 1):
        yield f"truncated to {n}", data[:n]
    positions = random.Random(seed).sample(range(len(data)), 8)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():  # the first byte of each member's data, after its local header
            offset = info.header_offset
            name_len, extra_len = (int.from_bytes(data[offset + i:offset + i + 2], "little") for i in (26, 28))
            positions.append(offset + 30 + name_len + extra_len)
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        yield f"byte {pos} flipped", bytes(flipped)


def test_truncated_or_flipped_keras_files_are_reported_not_loaded(tiny, tmp_path):
    good = tmp_path / "good.keras"
    tiny.save(good)
    data = good.read_bytes()
    detected = 0
    for label, corrupted in _corruptions(data):
        path = tmp_path / "bad.keras"
        path.write_bytes(corrupted)
        try:
            model = files.load_keras_model(path)
        except files.ModelFileError as err:
            message = str(err)
            assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 500, (label, message)
            detected += 1
        else:  # a flip in bytes nothing reads (zip header padding...) may go unnoticed: then nothing changed
            for got, want in zip(model.get_weights(), tiny.get_weights()):
                np.testing.assert_array_equal(got, want, err_msg=label)
    assert detected >= 14  # every truncation and every flip inside a member's data


def test_a_keras_file_kerasae_wrote_is_checked_against_its_sha256(tiny, tmp_path):
    path = tmp_path / "best.keras"
    training.save_model_atomic(tiny, path)
    record = files.checksum_path(path)
    assert json.loads(record.read_text()) == {"sha256": files.sha256_file(path), "previous": None}
    files.load_keras_model(path)
    first = path.read_bytes()
    training.save_model_atomic(tiny, path)  # a second save records the first as "previous"
    assert json.loads(record.read_text())["previous"] == hashlib.sha256(first).hexdigest()
    # Killed between writing the record and renaming the new file: the old file still loads.
    path.write_bytes(first)
    files.load_keras_model(path)
    # Any other content is refused, also a flip in bytes the zip reader never checks (the file comment).
    path.write_bytes(first + b"x")
    with pytest.raises(files.ModelFileError, match="best.keras: sha256 mismatch with best.keras.sha256.json"):
        files.load_keras_model(path)
    record.write_text("{")
    with pytest.raises(files.ModelFileError, match="unreadable sha256 record"):
        files.load_keras_model(path)


@pytest.fixture
def bad_run(tiny, tmp_path):
    """A run directory whose best.keras is truncated (model.keras is fine: the evaluator reads best.keras)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"dataset": "mnist"}}))
    tiny.save(run / "model.keras")
    data = (run / "model.keras").read_bytes()
    (run / "best.keras").write_bytes(data[:len(data) // 2])
    return run


def test_evaluate_and_export_report_a_corrupt_keras_file_with_exit_2(bad_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best = bad_run / "best.keras"
    with pytest.raises(files.ModelFileError, match="best.keras: not a readable .keras archive"):
        evaluate.load_model(bad_run)
    for main, argv, prog in ((cli.evaluate_main, [str(bad_run), "--no-progress"], "evaluate.py"),
                             (cli.export_main, [str(best), "--name", "x", "--tflite", "none"], "export.py")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and err[-1].startswith(f"{prog}: error: {best}: "), err
        assert "truncated or corrupted" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "exports").exists()  # the default export folder


def test_init_from_a_corrupt_keras_file_exits_2(bad_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.train_main(["--init-from", str(bad_run / "best.keras"), "--out", str(tmp_path / "ft"), "--epochs", "1",
                        "--max-train-samples", "100", "--max-test-samples", "10", "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and f"{bad_run / 'best.keras'}: not a readable .keras archive" in err[-1], err


def test_a_lambda_layer_is_refused(tmp_path, capsys):
    """safe_mode=True: a .keras file with a Lambda (pickled Python bytecode) is never deserialized."""
    evil = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda t: t * 2.0)])
    evil.save(tmp_path / "evil.keras")
    with pytest.raises(files.ModelFileError, match=r"evil.keras: refused to load unsafe content .*Lambda"):
        files.load_keras_model(tmp_path / "evil.keras")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "evil.keras", run / "model.keras")
    with pytest.raises(files.ModelFileError, match="refused to load unsafe content"):
        evaluate.load_model(run)
    with pytest.raises(SystemExit) as info:
        cli.export_main([str(tmp_path / "evil.keras"), "--name", "x", "--export-dir", str(tmp_path / "exp"),
                         "--tflite", "none"])
    assert info.value.code == 2 and "refused to load unsafe content" in capsys.readouterr().err
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(files.ModelFileError, match="not a kerasae model"):
        files.load_keras_model(tmp_path / "plain.keras")
    with pytest.raises(files.ModelFileError, match="no such model file"):
        files.load_keras_model(tmp_path / "missing.keras")


def test_every_keras_load_in_kerasae_goes_through_the_safe_loader():
    """The only keras.saving.load_model call in the package is the safe loader's, with safe_mode=True."""
    calls = {}
    for source in sorted((REPO / "kerasae").rglob("*.py")):
        text = source.read_text()
        for line in text.splitlines():
            if "load_model(" in line and "saving" in line:  # keras.saving.load_model, saving_lib.load_model
                calls.setdefault(source.relative_to(REPO).as_posix(), []).append(line.strip())
    assert list(calls) == ["kerasae/files.py"], calls
    assert all("safe_mode=True" in line for line in calls["kerasae/files.py"])


def test_the_backup_commits_an_epoch_only_after_its_history_row_and_best_model(tmp_path, monkeypatch):
    """A kill right after a backup resumes after the epoch it records: that epoch's history row and best.keras must
    already be on disk then, or the rerun never writes the row (a kill -9 under load lost epoch 0's row)."""
    from kerasae.training import callbacks, run_dir

    seen = []
    save = callbacks.AtomicBackupAndRestore._save_model

    def checked_save(self):
        out = Path(self.backup_dir).parent
        seen.append(([int(row["epoch"]) for row in run_dir.read_history(out / "history.csv")],
                     self._current_epoch, (out / "best.keras").exists()))
        save(self)

    monkeypatch.setattr(callbacks.AtomicBackupAndRestore, "_save_model", checked_save)
    training.train(preset="ae-shallow", epochs=3, max_train_samples=512, max_test_samples=64, validation_size=128,
                   out=str(tmp_path / "run"), verbose=0)
    assert [done for _, done, _ in seen] == [1, 2, 3]
    for rows, done, best in seen:
        assert rows == list(range(done)) and best

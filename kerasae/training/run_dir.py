"""The run directory's files: creating it, model saves that are never half-written, the resume point
and history.csv.

Kept apart from the callbacks and the loops because both use it (the checkpoint callbacks save
through `save_model_atomic` and `check_free_space`; `fit` trims and reads the history), and it
needs no TensorFlow beyond `model.save`.
"""

import csv
import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

from kerasae.config import _IGNORED_FOR_COMPAT
from kerasae.files import atomic_path, json_text, write_checksum


def save_model_atomic(model, path):
    """model.save to a temporary file next to `path`, renamed onto it when complete (see `atomic_path`).

    Whenever the process dies or the write fails (disk full, permission denied: an OSError naming
    `path`), `path` holds the previous model or nothing, never half a file.
    """
    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the extension
        model.save(tmp)
        write_checksum(path, tmp)  # checked by load_keras_model


def check_free_space(directory, needed):
    """Raise ENOSPC before an HDF5 write that would not fit: HDF5 crashes the whole process (segfault in
    H5Fclose) when the disk fills during a .h5 write, instead of raising an error."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (needs about {needed:,} bytes, {free:,} free)")


def prepare_run_dir(config):
    """Create the run directory, refusing one that holds a run with a different config.

    With config.overwrite a run already there is renamed aside (atomically) and deleted only once the new
    directory is in place and writable; if that fails, the old run is put back.
    """
    run_dir = check_run_dir(config)
    aside = None
    if getattr(config, "overwrite", False) and (run_dir / "config.json").is_file():
        aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        try:
            os.rename(run_dir, aside)
        except OSError as err:
            raise ValueError(f"out: cannot replace the run in {str(run_dir)!r} ({err.strerror})") from err
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        if aside is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            os.rename(aside, run_dir)
        raise ValueError(f"out: cannot write to run directory {str(run_dir)!r} ({err.strerror})") from err
    if aside is not None:
        shutil.rmtree(aside)
    return run_dir


def _differing_fields(config, config_path):
    wanted = {k: v for k, v in json.loads(json_text(config.to_json())).items()
              if k not in _IGNORED_FOR_COMPAT}
    try:
        previous = json.loads(config_path.read_text()).get("train", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"out: {config_path} is not a kerasae run config; use another --out") from err
    # A field the recorded run predates (e.g. precision) had its default then.
    defaults = json.loads(json_text(type(config)().to_json())) if dataclasses.is_dataclass(config) else {}
    return sorted(k for k in set(wanted) | set(previous)
                  if k not in _IGNORED_FOR_COMPAT and wanted.get(k) != previous.get(k, defaults.get(k)))


def check_run_dir(config):
    """config.out as a Path; a ValueError if it holds a run with a different config (unless config.overwrite).
    Creates nothing."""
    run_dir = Path(config.out)
    config_path = run_dir / "config.json"
    if config_path.exists() and not getattr(config, "overwrite", False):
        differing = _differing_fields(config, config_path)
        if differing:
            raise ValueError(f"out: {str(run_dir)!r} holds a run with a different config (differs in: "
                             f"{', '.join(differing)}); choose another --out, or --overwrite (overwrite=True) to "
                             "replace it")
    return run_dir


def finished_run(config):
    """The metrics.json of a finished run of exactly this config in config.out, else None (no run, another
    config, or an interrupted run, which resumes)."""
    run_dir = Path(config.out)
    if not ((run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()
            and (run_dir / "config.json").is_file()) or (run_dir / "backup").exists():
        return None
    try:
        if _differing_fields(config, run_dir / "config.json"):
            return None
        return json.loads((run_dir / "metrics.json").read_text())
    except (ValueError, OSError):
        return None


def finished_message(out, metrics):
    """The line a rerun of a finished run prints instead of training (the command line and `train` alike)."""
    return (f"{out} already holds this finished run ({metrics.get('epochs')} epochs; test: "
            f"{describe_test_metrics(metrics)}); --overwrite (overwrite=True) trains it again")


def describe_test_metrics(metrics):
    """metrics.json's test metrics as "loss 1.234, kl 5.678"."""
    return ", ".join(f"{k} {v:.4g}" for k, v in (metrics.get("test") or {}).items() if isinstance(v, (int, float)))


def backup_epoch(backup_dir):
    """The epoch a run in `backup_dir` resumes from (0: no backup)."""
    meta = Path(backup_dir) / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else 0


def trim_history(history_path, resume_epoch):
    """Keep the history rows of epochs before `resume_epoch`; a fresh run starts a fresh history."""
    if not history_path.exists():
        return
    with open(history_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if resume_epoch == 0 or not rows:
        history_path.unlink()
        return
    with open(history_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["epoch"]) < resume_epoch)


def read_history(history_path):
    """history.csv as one dict per epoch (an empty list when there is none yet)."""
    if not Path(history_path).exists():
        return []
    with open(history_path, newline="") as f:
        # CSVLogger writes "NA" for a metric an epoch lacks (val_* when training without validation)
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("NA", "", None)}
                for row in csv.DictReader(f)]

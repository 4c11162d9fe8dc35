"""The `kerasae` command (python -m kerasae, kerasae.cli.main) and its output for people: the dispatcher, the zoo
table, where exports go, the export and evaluate summaries, a finished run rerun, loading a run directory."""

import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from conftest import REPO
import kerasae
from kerasae import cli

TINY = ["--preset", "vae-mlp", "--max-train-samples", "300", "--max-test-samples", "50", "--validation-size", "60",
        "--epochs", "1", "--batch-size", "60", "--verbose", "0"]

_PROBE = """
import runpy, sys
sys.argv = [{argv0!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
print("EXIT", code, "TF", "tensorflow" in sys.modules, "KERAS", "keras" in sys.modules)
"""


def _probe(module, args, tmp_path):
    code = _PROBE.format(argv0=module, args=args, module=module)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("args,code,prefix", [
    (["--help"], 0, None),
    (["train", "--help"], 0, None),
    (["zoo", "--help"], 0, None),
    (["trian"], 2, "kerasae: error: unknown command 'trian'; did you mean 'train'?"),
    ([], 2, "kerasae: error: the following arguments are required: COMMAND"),
    (["train", "--epochs", "0"], 2, "kerasae train: error: argument --epochs: must be an integer >= 1, got '0'"),
    (["export", "--no-such-flag"], 2, "kerasae export: error: unrecognized arguments: --no-such-flag"),
    (["evaluate"], 2, "kerasae evaluate: error: the following arguments are required: RUN_DIR"),
    (["zoo", "show"], 2, "kerasae zoo: error: `show` takes one NAME"),
    (["compress", "missing.png", "out.kaec"], 2, "kerasae compress: error: missing.png does not exist"),
    (["decompress", "missing.kaec", "out.png"], 2, "kerasae decompress: error: missing.kaec does not exist"),
])
def test_python_m_kerasae_answers_before_tensorflow_loads(args, code, prefix, tmp_path):
    """`python -m kerasae` (what the console script runs): help and usage errors from argparse alone, the
    error's prefix naming the subcommand as invoked."""
    proc = _probe("kerasae", args, tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == f"EXIT {code} TF False KERAS False", proc.stderr[-2000:]
    if prefix:
        assert proc.stderr.strip().splitlines()[-1].startswith(prefix), proc.stderr


@pytest.mark.parametrize("command", ["train", "export", "evaluate", "convert", "reproduce", "zoo"])
def test_python_m_each_cli_module_runs_its_command(command, tmp_path):
    """`python -m kerasae.cli.train` used to print runpy's warning, do nothing and exit 0: it is the command."""
    help_run = subprocess.run([sys.executable, "-m", f"kerasae.cli.{command}", "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert help_run.returncode == 0 and help_run.stdout.startswith(f"usage: python -m kerasae.cli.{command}")
    assert "RuntimeWarning" not in help_run.stderr, help_run.stderr
    bad = _probe(f"kerasae.cli.{command}", ["--no-such-flag"], tmp_path)
    assert bad.stdout.strip().splitlines()[-1] == "EXIT 2 TF False KERAS False", bad.stderr[-2000:]
    assert f"python -m kerasae.cli.{command}: error: " in bad.stderr


def test_the_console_script_is_the_dispatcher():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["kerasae"].partition(":")
    assert (module, function) == ("kerasae.cli.main", "main")
    assert set(cli.main.__globals__["COMMANDS"]) == {p.stem for p in (REPO / "kerasae" / "cli").glob("*.py")} - {
        "__init__", "main", "arguments", "startup"}  # one module per subcommand


def test_a_mistyped_preset_or_zoo_name_gets_did_you_mean():
    from kerasae import zoo

    with pytest.raises(ValueError, match=r"unknown preset 'vae-mpl'; did you mean 'vae-mlp'\?") as err:
        kerasae.build("vae-mpl")
    assert "ae-mlp-seed" not in str(err.value)  # not the list of every preset
    with pytest.raises(ValueError, match=r"no pretrained model 'vae_resnet_32_mnist'; did you mean "
                                         r"'vae_resnet_32d_mnist'\?"):
        zoo.load_pretrained("vae_resnet_32_mnist")
    with pytest.raises(ValueError, match=r"unknown preset 'qwerty' \("):  # nothing close: no suggestion
        kerasae.build("qwerty")


# ---- kerasae zoo ----------------------------------------------------------------------------------

def test_zoo_lists_every_entry_with_its_facts(capsys):
    import tensorflow as tf

    from kerasae import zoo
    from kerasae.codec.api import load_coder, zoo_codecs

    assert cli.zoo_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "DATA", "WEIGHTS", "SIZE", "METRIC"]
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in lines[1:-1]}
    assert sorted(rows) == sorted(zoo.available() + zoo_codecs())
    path = zoo.version_dir("iwae_mlp_50d_mnist")
    manifest = json.loads((path / "assets.extra" / "manifest.json").read_text())
    model = zoo.from_preset("iwae_mlp_50d_mnist")
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for root in (path, path.parent / "tflite")
                  for d, _, names in os.walk(root) for f in names)
    name, family, data, weights, size, metric = rows["iwae_mlp_50d_mnist"]
    assert (family, data, weights) == ("vae", "MNIST, binarized", f"{model.count_params():,}")
    assert size == f"{on_disk / 2**20:.1f} MiB"
    assert metric == f"NLL {manifest['metrics']['test']['nll']:.2f} nats (k=5000)"
    assert rows["ae_mlp_2d_mnist"][5].startswith("MSE") and rows["ae_mlp_2d_mnist"][2] == "MNIST"
    for name in zoo_codecs():  # the pretrained codec ladder: its weights, files and measured rate
        info = json.loads((zoo.default_zoo_dir() / name / "codec.json").read_text())
        coder = load_coder(name)
        on_disk = sum(f.stat().st_size for f in (zoo.default_zoo_dir() / name).iterdir())
        assert rows[name][1:] == ["codec", "photographs", f"{coder.model.count_params():,} fp16",
                                  f"{on_disk / 2**20:.1f} MiB", info["metric"]]
        assert re.fullmatch(r"\d\.\d{3} bpp, PSNR \d\d\.\d\d dB \(validation photo\)", info["metric"])
    del tf


def test_zoo_show_names_one_entry_and_refuses_a_typo(capsys):
    assert cli.zoo_main(["show", "iwae_mlp_50d_mnist"]) == 0
    out = capsys.readouterr().out
    assert "latent_dim:  50" in out and "tflite/decode.int8.tflite" in out
    with pytest.raises(SystemExit) as exc:
        cli.zoo_main(["show", "iwae_mlp_50_mnist"], prog="kerasae zoo")
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("kerasae zoo: error: no pretrained model 'iwae_mlp_50_mnist'; did you mean "
                           "'iwae_mlp_50d_mnist'?")


# ---- where exports go -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["checkout zoo", "package", "installed zoo", "KERASAE_ZOO"])
def test_exports_never_go_into_the_zoo_or_the_package(where, tmp_path, monkeypatch):
    from kerasae import export, files

    package = REPO / "kerasae"
    target = {"checkout zoo": REPO / "exported" / "mine", "package": package / "mine",
              "installed zoo": package / "pretrained", "KERASAE_ZOO": tmp_path / "zoo" / "sub"}[where]
    monkeypatch.setenv("KERASAE_ZOO", str(tmp_path / "zoo"))
    model = kerasae.build("ae-shallow", latent_dim=4)
    model.build((None, 28, 28, 1))
    with pytest.raises(ValueError, match="export_dir: .* is inside .*Only `kerasae reproduce --export-zoo` writes"):
        export.export_model(model, target, "mine", tflite=())
    assert not (target / "mine").exists()
    with files.zoo_writes():  # the zoo's own command may
        assert files.check_export_dir(target) == target
    assert files.check_export_dir(tmp_path / "mine") == tmp_path / "mine"


def test_a_refused_export_dir_is_a_usage_error_before_training(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--export", "mine", "--export-dir", str(REPO / "exported"), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and not (tmp_path / "r").exists()
    zoo = REPO / "exported"
    err = capsys.readouterr().err
    assert f"train.py: error: --export-dir: {zoo} is inside {zoo}, the pretrained zoo's source" in err


# ---- a tiny run: export, evaluate, rerun, load ----------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("command") / "run"
    assert cli.train_main([*TINY, "--out", str(out)]) == 0
    return out


def _file_size(num_bytes):  # as a person reads it, computed here from the file
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 1024:.1f} KiB"


def test_export_writes_the_default_set_into_exports_and_says_what(run, tmp_path, monkeypatch, capfd):
    """No flags but a name: ./exports/NAME; encode and decode as fp32 and int8; each file listed with its size and
    parity; the converter's C++ chatter (int8 calibration prints 'fully_quantize: ...' to fd 2) held back."""
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert cli.export_main([str(run), "--name", "mine"], prog="kerasae export") == 0
    out, err = capfd.readouterr()
    tflite = tmp_path / "exports" / "mine" / "tflite"
    assert sorted(p.name for p in tflite.iterdir()) == [
        "decode.fp32.tflite", "decode.int8.tflite", "encode.fp32.tflite", "encode.int8.tflite", "manifest.json"]
    assert (tmp_path / "exports" / "mine" / "1" / "saved_model.pb").is_file()
    manifest = json.loads((tflite / "manifest.json").read_text())
    for path in tflite.glob("*.tflite"):
        line = next(line for line in out.splitlines() if line.strip().startswith(path.name))
        assert _file_size(path.stat().st_size) in line
        parity = manifest["tflite"]["files"][path.name]["parity"]
        metric = "max_diff" if ".fp32." in path.name else "mean_abs_diff"
        assert all(f"{key} {value[metric]:.2g}" in line for key, value in parity.items()), line
    assert "fully_quantize" not in err and "fully_quantize" not in out, err


def test_quiet_fd2_holds_back_c_output_and_replays_it_on_failure(capfd):
    from kerasae._stderr import quiet_fd2

    with quiet_fd2():
        os.write(2, b"converter chatter\n")
    with pytest.raises(RuntimeError), quiet_fd2():
        os.write(2, b"the real error's context\n")
        raise RuntimeError("conversion failed")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "the real error's context\nafter\n"


#: TensorFlow 2.21's start on a 2-core Intel Xeon without a GPU driver, as written to fd 2 with
#: TF_CPP_MIN_LOG_LEVEL unset (cut short), and two lines of other origins between its lines.
_START = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796673229.703384   22145 port.cc:153] oneDNN custom operations are on. You may see slightly different
I0000 00:00:1796673229.703873   22145 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796673229.790100   22145 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available
To enable the following instructions: AVX2 AVX512F AMX_TILE FMA, in other operations, rebuild TensorFlow with the
/venv/lib/python3.11/site-packages/pkg/mod.py:12: DeprecationWarning: a Python warning
  warnings.warn("a Python warning")
W0000 00:00:1796673231.1   22145 some.cc:1] a warning of TensorFlow's
E0000 00:00:1796673233.242178   22145 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call
E0000 00:00:1796673233.3   22145 other.cc:9] an error of TensorFlow's
"""


@pytest.mark.parametrize("level, kept", [
    (0, "all"),
    (1, ["/venv/lib", "  warnings.warn", "W0000", "E0000 00:00:1796673233.242178", "E0000 00:00:1796673233.3"]),
    (2, ["/venv/lib", "  warnings.warn", "E0000 00:00:1796673233.3"]),  # no driver: cuInit's failure is not news
    (3, ["/venv/lib", "  warnings.warn"]),
])
def test_tensorflows_start_up_chatter_is_filtered_to_the_log_level(level, kept):
    from kerasae._stderr import filter_chatter

    lines = filter_chatter(_START, level).splitlines()
    if kept == "all":
        assert lines == _START.splitlines()
    else:
        assert [line[:len(prefix)] for line, prefix in zip(lines, kept)] == kept and len(lines) == len(kept)
    with_driver = _START.replace("Could not find cuda drivers", "Found the drivers")  # then cuInit's failure is
    assert any("cuInit" in line for line in filter_chatter(with_driver, 2).splitlines())  # news


def test_a_failed_tensorflow_start_shows_everything_it_wrote(tmp_path):
    """start_tensorflow holds TensorFlow's start-up lines back only when the start succeeds."""
    code = ("import os, sys\n"
            "class NoTensorFlow:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'tensorflow':\n"
            "            os.write(2, b'I0000 00:00:1.5   7 loader.cc:1] what was tried\\n')\n"
            "            raise ImportError('no tensorflow here')\n"
            "sys.meta_path.insert(0, NoTensorFlow())\n"
            "from kerasae.cli.startup import start_tensorflow\n"
            "start_tensorflow()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "loader.cc:1] what was tried" in proc.stderr and "ImportError: no tensorflow here" in proc.stderr


def test_evaluate_prints_a_table_and_json_on_request(run, capsys):
    assert cli.evaluate_main([str(run), "--k", "4", "--no-progress"]) == 0
    table = capsys.readouterr().out
    saved = json.loads((run / "evaluation.json").read_text())
    vae = saved["vae"]
    assert len(table.splitlines()) < 20 and not re.search(r"\[\s*-?\d", table)  # no per-dimension arrays
    assert f"{vae['nll']:.2f} ± {vae['nll_stderr']:.2f}  nats per image" in table
    assert re.search(rf"\n  negative ELBO +{-vae['elbo']:.2f}  nats per image\n", table), table
    assert f"{vae['active_units']}  of {len(vae['activity_per_dim'])}" in table
    assert cli.evaluate_main([str(run), "--k", "4", "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["vae"]["activity_per_dim"] == vae["activity_per_dim"] and printed["num_test"] == 50


def _copy_run(run, to):
    """The run in another directory, its config's `out` pointing there (as if trained there)."""
    import shutil

    shutil.copytree(run, to)
    config = json.loads((to / "config.json").read_text())
    config["train"]["out"] = str(to)
    (to / "config.json").write_text(json.dumps(config))
    return to


def test_a_finished_run_is_reported_without_loading_tensorflow(run, tmp_path):
    """The rerun's answer comes before TensorFlow loads (it took ~27 s on a busy 2-core machine with it)."""
    copy = _copy_run(run, tmp_path / "run")
    script = ("import sys; sys.modules['tensorflow'] = None  # importing it now fails\n"
              "from kerasae import cli\n"
              f"sys.exit(cli.train_main({[*TINY, '--out', str(copy)]!r}))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{copy} already holds this finished run")


def test_a_finished_run_rerun_says_so_and_overwrite_retrains(run, capsys, tmp_path, monkeypatch):
    """The same command again: one line, exit 0, nothing trained. --overwrite: a new run from scratch."""
    copy = _copy_run(run, tmp_path / "run")
    model_bytes = (copy / "model.keras").read_bytes()
    metrics = json.loads((copy / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.train_main([*TINY, "--out", str(copy)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{copy} already holds this finished run")
    assert f"loss {metrics['test']['loss']:.4g}" in out[0]
    assert (copy / "model.keras").read_bytes() == model_bytes
    seen = []

    def prepare(config):  # what --overwrite hands to training (prepare_run_dir's part is tested below)
        seen.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(kerasae.training, "prepare", prepare)
    with pytest.raises(SystemExit):
        cli.train_main([*TINY, "--out", str(copy), "--overwrite"])
    assert [c.overwrite for c in seen] == [True]


def test_under_multiworker_the_chief_answers_for_a_finished_run_and_alone_exports_it(tmp_path, monkeypatch, capsys):
    """No answer before TensorFlow there: the workers hear the chief (kerasae.training.finished_metrics, run with two
    workers in test_multiworker.py), and only the chief exports, as after training."""
    import importlib

    from kerasae import distribute

    cli_train = importlib.import_module("kerasae.cli.train")
    metrics, asked, exported = {"epochs": 3, "test": {"loss": 1.5}}, [], []
    monkeypatch.setattr(kerasae.training, "finished_metrics", lambda config: asked.append(config.strategy) or metrics)
    monkeypatch.setattr(distribute, "get_strategy", lambda name: f"strategy {name}")
    monkeypatch.setattr(cli_train, "_export", lambda args, run_dir: exported.append(run_dir))
    out = tmp_path / "run"
    for chief in (True, False):
        monkeypatch.setattr(distribute, "is_chief", lambda strategy: strategy == "strategy multiworker" and chief)
        assert cli.train_main([*TINY, "--strategy", "multiworker", "--out", str(out), "--export", "tiny",
                               "--export-dir", str(tmp_path / "exported")]) == 0
    assert asked == ["multiworker", "multiworker"] and exported == [str(out)]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{out} already holds this finished run (3 epochs; test: loss 1.5); --overwrite (overwrite=True) "
                     "trains it again"] * 2


def test_overwrite_replaces_a_run_of_another_config_and_keeps_it_if_the_new_one_cannot_start(run, tmp_path,
                                                                                               monkeypatch):
    import pathlib

    from kerasae.config import TrainConfig
    from kerasae.training.run_dir import check_run_dir, finished_run, prepare_run_dir

    copy = _copy_run(run, tmp_path / "run")
    other = TrainConfig(preset="ae-shallow", out=str(copy))
    with pytest.raises(ValueError, match="holds a run with a different config"):
        check_run_dir(other)
    assert finished_run(other) is None
    same = json.loads((copy / "config.json").read_text())["train"]
    assert finished_run(TrainConfig(**{**same, "verbose": 2})) is not None  # verbose does not change the run
    (copy / "backup").mkdir()  # an interrupted run (BackupAndRestore's state): it resumes, not reported as done
    assert finished_run(TrainConfig(**same)) is None
    (copy / "backup").rmdir()
    write_text = pathlib.Path.write_text

    def unwritable(path, *args, **kwargs):  # the new run directory cannot be written: the old run comes back
        if path.name.startswith(".write-test-"):
            raise PermissionError(13, "Permission denied")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", unwritable)
    with pytest.raises(ValueError, match="cannot write to run directory"):
        prepare_run_dir(TrainConfig(preset="ae-shallow", out=str(copy), overwrite=True))
    monkeypatch.undo()
    assert (copy / "model.keras").is_file()
    assert prepare_run_dir(TrainConfig(preset="ae-shallow", out=str(copy), overwrite=True)) == copy
    assert list(copy.iterdir()) == []


def test_load_model_takes_a_run_directory(run, tmp_path):
    from kerasae.files import ModelFileError

    model = kerasae.load_model(run)
    reference = kerasae.load_model(run / "model.keras")
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(model.reconstruct(x).numpy(), reference.reconstruct(x).numpy())
    half = tmp_path / "half"
    half.mkdir()
    (half / "best.keras").write_bytes((run / "best.keras").read_bytes())
    with pytest.raises(ModelFileError, match=r"no model.keras in .*half \(the run has not finished\?\); best.keras "
                                             r"is there"):
        kerasae.load_model(half)
    with pytest.raises(ModelFileError, match=r"nor best.keras"):
        kerasae.load_model(tmp_path)


@pytest.mark.slow
def test_a_non_editable_install_has_the_kerasae_command(tmp_path):
    """`pip install` of a copy of the project (setuptools writes build/ into the source): its console script runs
    the dispatcher from another directory, with the installed package, and writes nothing into it."""
    import shutil

    source, target, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "kerasae", "exported"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    elsewhere.mkdir()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-compile", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert "Warning" not in pip.stderr, pip.stderr[-3000:]  # e.g. setuptools' about the zoo's data folders
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}
    env = dict(os.environ, PYTHONPATH=str(target))
    command = [str(target / "bin" / "kerasae")]
    version = subprocess.run([*command, "--version"], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"kerasae {kerasae.__version__}", version.stderr
    bad = subprocess.run([*command, "train", "--epochs", "0"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("kerasae train: error: ")
    where = subprocess.run([sys.executable, "-c", "import kerasae.cli.main as m; print(m.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(target)), where.stderr
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()} == before
    assert (target / "kerasae" / "pretrained" / "iwae_mlp_50d_mnist").is_dir()  # the zoo ships with it

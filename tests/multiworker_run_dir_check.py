"""Run by test_multiworker.py as one of two workers of a MultiWorkerMirroredStrategy on 127.0.0.1 (TF_CONFIG): the
train command with every os.rename and shutil.rmtree recorded, and the renames of OUT by worker SLOW delayed by
DELAY seconds (so that the other worker gets there first, whatever the machine's load). Prints, as its last line,
JSON {"index": this worker, "calls": [[name, path, ..., time.time() at its end], ...], "prepared": time.time() when
kerasae.training.prepare returned, "code": exit status}.

`multiworker_run_dir_check.py SLOW DELAY TRAIN_ARGS... --out OUT`
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

slow, delay, args = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
out = Path(args[args.index("--out") + 1]).resolve()
calls, prepared = [], []


def _recorded(name, real):
    def call(path, *rest, **kwargs):
        if name == "rename" and index == slow and Path(path).resolve() == out:
            time.sleep(delay)
        try:
            return real(path, *rest, **kwargs)
        finally:
            calls.append([name, str(path), *map(str, rest), time.time()])

    return call


os.rename = _recorded("rename", os.rename)
shutil.rmtree = _recorded("rmtree", shutil.rmtree)

from kerasae.cli.train import train_main  # noqa: E402
from kerasae.training import core  # noqa: E402  (train_main takes kerasae.training.prepare from it)

_prepare = core.prepare


def _timed_prepare(config):
    try:
        return _prepare(config)
    finally:
        prepared.append(time.time())


core.prepare = _timed_prepare
try:
    code = train_main(args)
except SystemExit as exit:
    code = exit.code
print(json.dumps({"index": index, "calls": calls, "prepared": prepared[0] if prepared else None, "code": code}),
      flush=True)
sys.exit(code)

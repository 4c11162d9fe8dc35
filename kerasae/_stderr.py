"""What C++ code writes to file descriptor 2: held back (`quiet_fd2`), or filtered to what was asked for.

TensorFlow 2.21 logs through absl before absl is initialized, and those lines ignore TF_CPP_MIN_LOG_LEVEL: on
every start, twice, "oneDNN custom operations are on" and "Could not find cuda drivers", and on a machine
without a GPU driver an error line "failed call to cuInit", which looks like a failure and is not one.
`filter_chatter` keeps what TF_CPP_MIN_LOG_LEVEL asks for; the TFLite converter's MLIR output is held back
whole. Imports no TensorFlow.
"""

import contextlib
import os
import re
import sys
import tempfile

#: An absl/TensorFlow C++ log line: severity letter, then MMDD (absl writes "0000" before it is initialized).
_ABSL_LINE = re.compile(r"[IWEF]\d{4} ")
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_DRIVER = "Could not find cuda drivers"
_NO_DRIVER_CUINIT = "failed call to cuInit"
#: Python's own output, which never continues a C++ log line: a warning ("file.py:12: UserWarning: ...") or a
#: traceback.
_PYTHON_OUTPUT = re.compile(r"(\S+:\d+: \w*Warning\b|Traceback \(most recent call last\))")


def min_log_level():
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: 0 (everything) when unset or not an integer."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_chatter(text, level):
    """The lines of `text` (captured stderr) a user asked to see at TF_CPP_MIN_LOG_LEVEL=`level`.

    Drops absl lines whose severity (I, W, E, F = 0..3) is below `level`, the lines that continue them, absl's
    preamble, and, at level >= 2 where TensorFlow reported no CUDA driver, the cuInit error that follows from
    it. Everything else (Python's warnings and tracebacks, any other error) is kept, in order."""
    if level <= 0:
        return text
    no_driver = level >= 2 and _NO_DRIVER in text
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        if _ABSL_LINE.match(line):
            dropping = "IWEF".index(line[0]) < level or (no_driver and _NO_DRIVER_CUINIT in line)
        elif line.startswith(_PREAMBLE):
            dropping = True
        elif _PYTHON_OUTPUT.match(line):
            dropping = False
        if not dropping:  # other lines continue the line before them (a multi-line log message)
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def quiet_fd2(keep=None):
    """Capture what is written to file descriptor 2 in this block (C++ logging included, which Python's
    redirections do not reach). If the block raises, all of it goes to stderr, so a failure keeps its
    diagnostics; otherwise `keep(text)` does (default: nothing)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            shown = text if failed else (keep(text) if keep else "")
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()

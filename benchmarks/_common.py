"""What the benchmark scripts share: timing, median and spread, the machine and library facts, JSON output.

Imported by `train_throughput.py` and `inference_latency.py` (run as scripts, so this folder is on
sys.path). Nothing here imports TensorFlow or torch at module level: the scripts decide when.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

#: Libraries whose versions every result records.
_LIBRARIES = ("kerasae", "tensorflow", "keras", "tensorflow-probability", "numpy", "ai-edge-litert", "torch")


def setup_imports():
    """Silence TF's C++ start-up chatter and put this checkout first on sys.path; call before importing TF."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))  # `kerasae` from this checkout even when it is not installed


# ---- command line ------------------------------------------------------------------------------

def parse_args(parser, argv, defaults, out_name):
    """Add --out, parse, fill the options left unset from `defaults` (the quick or the full set)."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / out_name,
                        help=f"result JSON (default: benchmarks/results/{out_name})")
    args = parser.parse_args(argv)
    for key, value in defaults(args).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give a .json file path")
    return args


def report_header(result, out):
    """The first lines of a benchmark's printed report: where it went, and whether to trust it."""
    lines = [f"wrote {out}" + ("  (QUICK run: smoke only, numbers mean nothing)" if result["quick"] else "")]
    if result["machine_at_start"]["busy"] or result["machine_at_end"]["busy"]:
        lines.append("WARNING: the machine was busy (load average above half the cores at the start, or other "
                     f"processes using > {OTHER_LOAD_LIMIT} cores during the run): numbers are not results")
    return lines


def positive_int(text):
    """argparse type: an integer >= 1 (a bad value is a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text):
    """argparse type: comma-separated positive integers, e.g. "32,128,512"."""
    try:
        return [positive_int(part) for part in text.split(",") if part.strip()] or _empty(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def _empty(text):
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")


def choice_list(choices):
    """argparse type: a comma-separated subset of `choices`, order kept, duplicates dropped."""
    def parse(text):
        items = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}, "
                                             f"got {text!r}")
        return items
    return parse


# ---- timing and statistics ---------------------------------------------------------------------

def summarize(values, digits=6):
    """Median and spread of positive measurements: {"median", "min", "max", "n", "values"}."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values), "values": [round(v, digits) for v in values]}


def time_calls(fn, calls, warmup=3):
    """Seconds per call of `fn()` for `calls` timed calls after `warmup` untimed ones (each warm call timed alone)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def latency_summary(seconds):
    """A `summarize` of per-call seconds, in milliseconds, plus the 10th/90th percentiles."""
    ms = sorted(s * 1e3 for s in seconds)
    out = summarize(ms, digits=5)
    out.pop("values")  # hundreds of calls: keep the order statistics only
    out["p10"] = round(_quantile(ms, 0.1), 5)
    out["p90"] = round(_quantile(ms, 0.9), 5)
    out["unit"] = "ms per call"
    return out


def _quantile(sorted_values, q):
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def ratio(numerator, denominator):
    """numerator / denominator rounded, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


# ---- the machine -------------------------------------------------------------------------------

def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The instruction-set flags that decide which kernels run (matrix units, bf16, vector width).
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags():
    """Which of _CPU_FLAGS /proc/cpuinfo lists (None where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [flag for flag in _CPU_FLAGS if flag in flags]


def usable_cores():
    """CPUs this process may run on (the affinity mask; the logical count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def library_versions():
    versions = {"python": platform.python_version()}
    for dist in _LIBRARIES:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return versions


def machine_info():
    """CPU model, core counts and the load average now (a busy machine gives meaningless numbers)."""
    cores = usable_cores()
    load = load_average()
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(), "usable_cores": cores,
            "platform": platform.platform(), "load_average_1_5_15min": load,
            "busy": bool(load and load[0] > 0.5 * cores)}


def cpu_seconds():
    """(busy CPU-seconds of the whole machine incl. steal, CPU-seconds of this process and its children, wall).

    None for the first on systems without /proc/stat.
    """
    now = time.monotonic()
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None, own, now
    idle = ticks[3] + ticks[4]  # idle + iowait; steal (another VM on our cores) counts as busy
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), own, now


#: What counts as another workload during a run: this many cores busy on average outside this process.
OTHER_LOAD_LIMIT = 0.25


def other_load(start):
    """Cores kept busy by everything but this process (and its children) since `start` = cpu_seconds().

    The load average at the end of a run counts the benchmark's own threads, so it cannot say
    whether something else ran meanwhile; this can.
    """
    machine0, own0, wall0 = start
    machine1, own1, wall1 = cpu_seconds()
    if machine0 is None or machine1 is None or wall1 <= wall0:
        return None
    return round(max(0.0, (machine1 - machine0) - (own1 - own0)) / (wall1 - wall0), 3)


def tensorflow_threads(tf):
    """TF's thread settings; 0 means TF's default (one thread per usable core for each pool)."""
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {"intra_op": intra, "inter_op": inter,
            "intra_op_effective": intra or usable_cores(), "inter_op_effective": inter or usable_cores(),
            "note": "0 = TensorFlow's default, one thread per usable core"}


def import_torch():
    """(torch, None) or (None, why): torch is the optional `bench` extra, never a kerasae dependency."""
    try:
        import torch
    except ImportError as err:
        return None, f"not installed ({err}); pip install -e '.[bench]'"
    return torch, None


# ---- results -----------------------------------------------------------------------------------

_RUN_START = []  # cpu_seconds() when header() was called: write_result measures other processes since


def header(benchmark, args, quick):
    """The part of every result that says what ran where: benchmark, arguments, machine, versions."""
    _RUN_START[:] = [cpu_seconds()]
    return {"benchmark": benchmark, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "arguments": vars(args), "quick": quick,
            "machine_at_start": machine_info(), "versions": library_versions(),
            "note": "only numbers from a quiet machine mean anything; see benchmarks/README.md"}


def write_result(path, result):
    """Write `result` as JSON (strict: a NaN or infinity is an error, not a silent 'NaN')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end = machine_info()
    # The load average now includes this run's own threads: judge the run by the others' CPU use instead.
    others = other_load(_RUN_START[0]) if _RUN_START else None
    end["other_processes_cores"] = others
    end["busy"] = others is not None and others > OTHER_LOAD_LIMIT
    result["machine_at_end"] = end
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

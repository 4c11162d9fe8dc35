#!/usr/bin/env python
"""Reading the last records of a tfds split against reading its first: kerasae's tfds split (earlier shard files
skipped unopened, earlier records of its first file skipped unparsed) and tfds' own `as_dataset`.

    python benchmarks/tfds_skip.py            # the last / first 1,000 of 20,000 records in 8 files;
                                              # writes results/tfds_skip.json
    python benchmarks/tfds_skip.py --quick    # 100 of 1,000 records in 2 files, 2 repeats: a smoke test

The dataset is built offline, by a tfds GeneratorBasedBuilder defined here, in a temporary directory: --records
8x8 grey PNG images with labels in --files TFRecord shard files (and a small test split, so "train" is all of
them). Each arm reads --read records without decoding the images and counts them:
- kerasae: `open_dataset("tfds:...", mode="stream").train`, its `head(R)` and its `split_first(N - R)[1]`;
- tfds as_dataset + skip: `as_dataset("train", shuffle_files=False)` with the image's decoding skipped, `.take(R)`
  and `.skip(N - R)`, which parses every record it skips;
- tfds split slice: `as_dataset("train[N-R:]")`, tfds' own slicing, for comparison.
In one process, after one untimed read of each: --repeats rounds, each timing every read in turn, wall and CPU
time (this process's, all threads). Target: kerasae's last R take <= 1.5 x its first R (median wall time).
"""

import argparse
import sys
import tempfile
import time

import numpy as np

import _common as common

TARGET = 1.5
NAME = "kerasae_skip_bench"
TEST_RECORDS = 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 records in 2 files, 100 read, 2 repeats: a smoke test")
    parser.add_argument("--records", type=common.positive_int, help="records in the train split (default 20000)")
    parser.add_argument("--files", type=common.positive_int, help="shard files of the train split (default 8)")
    parser.add_argument("--read", type=common.positive_int, help="records read from each end (default 1000)")
    parser.add_argument("--repeats", type=common.positive_int, help="timed rounds (default 8)")

    def defaults(args):
        return {"records": 1000 if args.quick else 20_000, "files": 2 if args.quick else 8,
                "read": 100 if args.quick else 1000, "repeats": 2 if args.quick else 8}

    args = common.parse_args(parser, argv, defaults, "tfds_skip.json")
    if args.read >= args.records:
        parser.error(f"--read {args.read} must be below --records {args.records}")
    if args.files > args.records:
        parser.error(f"--files {args.files} must not exceed --records {args.records}")
    return args


def builder_class(records):
    """A tfds builder of `records` 8x8 grey images (image i holds i in its first two pixels), label i % 10."""
    import tensorflow_datasets as tfds

    class KerasaeSkipBench(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, records),
                    "test": self._generate_examples(records, TEST_RECORDS)}

        def _generate_examples(self, first, count):
            for i in range(first, first + count):
                image = np.full((8, 8, 1), i % 256, np.uint8)
                image[0, 0, 0] = i // 256 % 256
                yield i, {"image": image, "label": i % 10}

    return KerasaeSkipBench


def timed_count(ds, expected):
    """(wall s, CPU s) of iterating `ds` to its end; it must yield `expected` elements."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in ds.as_numpy_iterator())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if count != expected:
        raise SystemExit(f"tfds_skip.py: read {count} records, expected {expected}")
    return wall, cpu


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    import tensorflow_datasets as tfds

    from kerasae.data import open_dataset
    from kerasae.data.tuning import untuned

    tfds.disable_progress_bar()
    result = common.header("tfds_skip", args, args.quick)
    n, r = args.records, args.read
    with tempfile.TemporaryDirectory(prefix="kerasae-bench-tfds-") as data_dir:
        start = time.perf_counter()
        builder = builder_class(n)(data_dir=data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=args.files))
        common.log(f"built {n} + {TEST_RECORDS} records in {time.perf_counter() - start:.1f} s")
        train = open_dataset(f"tfds:{NAME}", data_dir=data_dir, mode="stream", log=common.log).train
        if train.count != n or len(train.shards) != args.files:
            raise SystemExit(f"tfds_skip.py: kerasae sees {train.count} records in {len(train.shards)} files, "
                             f"expected {n} in {args.files}")
        encoded = {"image": tfds.decode.SkipDecoding()}

        def tfds_split(split):
            return builder.as_dataset(split, shuffle_files=False, decoders=encoded)

        reads = {"kerasae": {"first": lambda: untuned(train.head(r).encoded()),
                             "last": lambda: untuned(train.split_first(n - r)[1].encoded())},
                 "tfds as_dataset + skip": {"first": lambda: tfds_split("train").take(r),
                                            "last": lambda: tfds_split("train").skip(n - r)},
                 "tfds split slice": {"first": lambda: tfds_split(f"train[:{r}]"),
                                      "last": lambda: tfds_split(f"train[{n - r}:]")}}
        times = {(arm, end): [] for arm, ends in reads.items() for end in ends}
        for arm, end in times:  # warm-up: tracing, the files into the page cache
            timed_count(reads[arm][end](), r)
        for rep in range(args.repeats):
            for arm, end in times:
                times[arm, end].append(timed_count(reads[arm][end](), r))
            common.log(f"round {rep + 1}/{args.repeats}: " + ", ".join(
                f"{arm} {end} {t[-1][0]:.2f} s" for (arm, end), t in times.items()))
    arms = {}
    for arm, ends in reads.items():
        row = {}
        for end in ends:
            walls, cpus = zip(*times[arm, end])
            row[f"{end}_wall_s"], row[f"{end}_cpu_s"] = common.summarize(walls, 4), common.summarize(cpus, 4)
        row["ratio_last_to_first"] = common.ratio(row["last_wall_s"]["median"], row["first_wall_s"]["median"])
        row["ratio_last_to_first_cpu"] = common.ratio(row["last_cpu_s"]["median"], row["first_cpu_s"]["median"])
        arms[arm] = row
    result["setup"] = {"records": n, "files": args.files, "read": r, "repeats": args.repeats,
                       "image": "8x8 grey PNG, label", "test_records": TEST_RECORDS,
                       "reading": "records parsed, images left encoded (not decoded), counted"}
    result["arms"] = arms
    result["target"] = f"kerasae's last {r} records <= {TARGET} x its first {r} (median wall time)"
    result["met"] = arms["kerasae"]["ratio_last_to_first"] <= TARGET
    out = common.write_result(args.out, result)
    lines = common.report_header(result, out)
    for arm, row in arms.items():
        lines.append(f"{arm}: first {r:,} {row['first_wall_s']['median']:.2f} s, last {r:,} "
                     f"{row['last_wall_s']['median']:.2f} s (ratio {row['ratio_last_to_first']}; CPU time "
                     f"{row['ratio_last_to_first_cpu']})")
    lines.append(f"other processes used {result['machine_at_end']['other_processes_cores']} cores; "
                 f"target: {result['target']}; met: {result['met']}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

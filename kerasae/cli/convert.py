"""`scripts/convert.py`: any dataset spec -> TFRecord shards that train.py streams."""

import argparse
from pathlib import Path

from kerasae import options
from kerasae.cli import startup
from kerasae.cli.arguments import _image_size, _positive_int, report_error


def build_convert_parser(prog="convert.py"):
    p = argparse.ArgumentParser(
        prog=prog, description="Convert a dataset (any --dataset spec) into TFRecord shards that "
        "train.py streams with --dataset tfrecord:OUT_DIR. Image files keep their encoding; arrays become PNG.")
    p.add_argument("dataset", help="mnist, tfds:NAME, idx:DIR, images:DIR, tfrecord:DIR|GLOB or npz:FILE")
    p.add_argument("out_dir", help="new directory for the shards and kerasae_dataset.json")
    p.add_argument("--data-dir", help="tensorflow-datasets data directory (for tfds:NAME)")
    p.add_argument("--image-size", type=_image_size,
                   help="the image size the shards declare (images are resized when read; default: as found)")
    p.add_argument("--color-mode", choices=options.COLOR_MODES, help="the channels the shards declare")
    p.add_argument("--shard-mb", type=_positive_int, default=100, help="approximate shard size (default: 100 MB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the images are written in")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images instead of stopping")
    return p


def convert_main(argv=None, prog="convert.py"):
    parser = build_convert_parser(prog)
    args = parser.parse_args(argv)
    if Path(args.out_dir).exists() and (not Path(args.out_dir).is_dir() or any(Path(args.out_dir).iterdir())):
        parser.error(f"out_dir {args.out_dir} already exists and is not an empty directory")
    startup.start_tensorflow()
    from kerasae import data as data_lib

    try:
        data = data_lib.open_dataset(args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                                     color_mode=args.color_mode, mode="stream" if _streamable(args.dataset) else "auto",
                                     skip_bad_images=args.skip_bad_images)
        data_lib.write_tfrecords(data, args.out_dir, shard_bytes=args.shard_mb << 20, seed=args.seed)
    except ValueError as err:  # DataError included: bad spec or images
        parser.error(" ".join(str(err).split()))
    except OSError as err:
        return report_error(parser.prog, err, code=1)
    return 0


def _streamable(spec):
    return spec.partition(":")[0] in ("images", "tfrecord", "tfds")


if __name__ == "__main__":  # python -m kerasae.cli.convert: the same as `kerasae convert`
    from kerasae.cli.main import run_module

    run_module(convert_main, "python -m kerasae.cli.convert")

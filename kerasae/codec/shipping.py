"""Shipping a trained ladder: its last stages' runs into the zoo as float16 entries, each swapped in whole.

`ship(root, zoo_dir, family)` is what `train_codec.py --ship ZOO_DIR` runs after the ladder's training
(`kerasae.codec.training`).
"""

import json
import os
from pathlib import Path

from kerasae.codec import training


def zoo_name(family, quality):
    """The zoo entry of a ladder's quality: codec_<family>_q<Q>_photos (the name its files carry)."""
    return f"codec_{family}_q{quality}_photos"


def ship(root, zoo_dir, family="hyperprior", log=print):
    """Every quality of `family`'s ladder trained under `root` into `zoo_dir` as `zoo_name(family, quality)`, its
    weights rounded to float16 (tables recomputed for them; half the bytes); -> {name: folder}. Each entry's
    codec.json gets the `metric` `kerasae zoo` lists: the bpp and PSNR of a real file of the validation photograph.

    Each entry is written beside the zoo and swapped in whole, so a failure leaves the previous entry; the zoo's
    size budget (kerasae.zoo.MAX_ZOO_BYTES) is checked before anything is swapped.
    """
    import shutil

    from kerasae import zoo
    from kerasae.codec import photos
    from kerasae.codec.coder import Coder

    root, zoo_dir = Path(root), Path(zoo_dir)
    runs = {q: training.final_run(root, family, q) for q, _, _ in training.LADDER_PLAN[family]}
    unfinished = [str(run) for run in runs.values() if not (run / "metrics.json").is_file()]
    if unfinished:
        raise ValueError(f"the {family} ladder has not finished training in {', '.join(unfinished)}: run "
                         f"train_codec.py --family {family} --root {root} first")
    validation = photos.validation_image()
    staged = {}
    try:
        for quality, run in sorted(runs.items()):
            name = zoo_name(family, quality)
            coder = Coder(Coder.load(run / "codec").model, name=name).rounded_to_float16()
            staged[name] = zoo_dir / f".{name}.new-{os.getpid()}"
            coder.save(staged[name], float16=True)
            _record_metric(staged[name], coder, validation)
            log(f"{name}: {sum(f.stat().st_size for f in staged[name].iterdir()) / 2**20:.2f} MiB (float16)")
        replaced = {zoo_dir / name for name in staged}
        total = sum(f.stat().st_size for f in zoo_dir.rglob("*")
                    if f.is_file() and not any(p in replaced for p in f.parents))
        if total > zoo.MAX_ZOO_BYTES:
            raise ValueError(f"the zoo in {zoo_dir} would take {total / 2**20:.1f} MiB with the {family} ladder, over "
                             f"the {zoo.MAX_ZOO_BYTES / 2**20:.0f} MiB budget")
        for name, folder in staged.items():
            old = zoo_dir / f".{name}.old-{os.getpid()}"
            if (zoo_dir / name).exists():
                os.rename(zoo_dir / name, old)
            os.rename(folder, zoo_dir / name)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        for folder in staged.values():
            shutil.rmtree(folder, ignore_errors=True)
    return {name: zoo_dir / name for name in staged}


def _record_metric(folder, coder, image):
    """Put into folder/codec.json the rate and PSNR of `coder`'s file of `image`, the validation photograph."""
    from kerasae.codec import evaluate
    from kerasae.files import write_json

    row = evaluate.measure(image, coder.compress, coder.decompress)
    info = json.loads((folder / "codec.json").read_text())
    info["metric"] = f"{row['bpp']:.3f} bpp, PSNR {row['psnr']:.2f} dB (validation photo)"
    write_json(folder / "codec.json", info)

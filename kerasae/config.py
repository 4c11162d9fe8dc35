"""`TrainConfig`: everything a training run depends on, one field per `scripts/train.py` flag; `reopen_options`:
how a run's recorded config reopens its dataset.

Importable without TensorFlow, so the CLI shows its defaults and parses before TF loads.
"""

import dataclasses
import os
from pathlib import Path

from kerasae.options import (DATA_MODES, LR_SCHEDULES, PRECISIONS, STRATEGIES, check_choice, check_number,
                             check_positive_int)

#: `init_from` names a pretrained zoo model with this prefix ("zoo:iwae_mlp_50d_mnist"), else a .keras file.
ZOO_PREFIX = "zoo:"
#: Fields that may change between reruns into the same --out (data_mode: the same images either way).
_IGNORED_FOR_COMPAT = ("verbose", "data_mode", "overwrite")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; `scripts/train.py` flags map one to one.

    `batch_size` is the *global* batch: under a strategy with R replicas each replica
    gets batch_size / R examples per step.
    """

    preset: str = "vae-mlp"
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # overrides of the preset's kwargs
    dataset: str = "mnist"
    data_dir: str | None = None
    image_size: tuple | None = None
    color_mode: str | None = None
    data_mode: str = "auto"  # "memory", "stream" or "auto" (by size): see kerasae.data.open_dataset
    skip_bad_images: bool = False  # leave out unreadable images (logged) instead of raising DataError
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    validation_size: int | None = None  # None: min(5000, 10% of the training images)
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 0
    out: str | None = None  # None: runs/<preset>
    strategy: str = "auto"
    cpu_replicas: int | None = None
    init_from: str | None = None  # a .keras file or "zoo:NAME[/VERSION]": fine-tune it instead of a new model
    steps_per_execution: int = 16  # several steps per tf.function call: ~2x samples/s on CPU for the MLP VAE
    jit_compile: bool | None = None  # None (auto): XLA where the model gains; see train_function_kind
    precision: str = "float32"  # "float32", "bfloat16", "float16" or "auto": see kerasae.training.precision
    mixed_precision: bool = False  # the older spelling of float16 on a GPU, bfloat16 elsewhere
    deterministic: bool = False  # TF op determinism: bit-identical reruns (slower on GPU)
    verbose: str | int = "auto"
    overwrite: bool = False  # train from scratch into an `out` that holds a run (finished, interrupted or other)

    def __post_init__(self):
        if self.out is None:
            self.out = os.path.join("runs", self.preset if self.init_from is None else "finetune")
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)

    def validate(self):
        """Raise ValueError naming the first bad field; checks the model kwargs by building nothing."""
        from kerasae import registry

        if self.init_from is None:
            registry.check_trainable(self.preset)
            registry.preset_kwargs(self.preset, **self.model_kwargs)
        elif str(self.init_from).startswith(ZOO_PREFIX):
            from kerasae import zoo

            zoo.version_dir(*zoo.parse_spec(self.init_from))  # a ValueError listing the zoo's models
        elif not Path(self.init_from).is_file():
            raise ValueError(f"init_from: no such model file {self.init_from!r} (a .keras file, or "
                             f"{ZOO_PREFIX}NAME for a pretrained model)")
        for name in ("epochs", "batch_size", "steps_per_execution"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_train_samples", "max_test_samples", "cpu_replicas"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if not isinstance(self.overwrite, bool):
            raise ValueError(f"overwrite must be True or False, got {self.overwrite!r}")
        if self.jit_compile not in (None, True, False):
            raise ValueError(f"jit_compile must be True, False or None (auto), got {self.jit_compile!r}")
        if self.validation_size is not None and (isinstance(self.validation_size, bool) or self.validation_size < 0):
            raise ValueError(f"validation_size must be >= 0, got {self.validation_size!r}")
        check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("data_mode", self.data_mode, DATA_MODES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.mixed_precision not in (True, False):
            raise ValueError(f"mixed_precision must be True or False, got {self.mixed_precision!r}")
        if self.mixed_precision and self.precision != "float32":
            raise ValueError(f"mixed_precision and precision={self.precision!r} both choose a precision: "
                             "give precision alone")
        if self.strategy == "default" and self.cpu_replicas and self.cpu_replicas > 1:
            raise ValueError("cpu_replicas > 1 needs strategy 'mirrored' or 'auto'")

    def to_json(self):
        return dataclasses.asdict(self)


def reopen_options(config_json):
    """(image_size, color_mode) to reopen a run's dataset with: the recorded data options, else (runs written
    before they were recorded) the training config's."""
    recorded = config_json.get("data")
    source = recorded if isinstance(recorded, dict) and "image_size" in recorded else config_json.get("train") or {}
    image_size = source.get("image_size")
    return (tuple(image_size) if image_size else None), source.get("color_mode")

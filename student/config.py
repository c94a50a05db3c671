"""The resolved training configuration: one dataclass, one override layer (flags).

Values the paper fixes are the defaults here; values that depend on the model size
(image sizes, dropout, stochastic depth, RandAugment) come from `models.config(model)`;
values derived from others (peak learning rate, step counts) are computed in code and
written next to the outputs in `model_dir/config.json`.

Paper recipe (Bello et al. 2021, Appendix; TPU reference resnet_rs configs):
  SGD momentum 0.9, peak LR 0.1 * labeled_batch / 256 after a 5-epoch linear warm-up,
  cosine decay to 0, weight decay 4e-5 (not on BatchNorm), label smoothing 0.1,
  EMA 0.9999, 350 epochs, global batch 4096. Noisy Student mixing: 3 pseudo-labeled
  images per labeled image, soft targets (teacher temperature 1).
"""

import dataclasses
import json
import math
import os

import tensorflow as tf

import models
from models import hardware

CONFIG_FILE = "config.json"
PRECISIONS = ("float32", "bfloat16")
STRATEGIES = ("auto", "cpu", "gpu", "tpu", "mirrored", "multi_worker")
RESUME_INPUT = ("skip", "reseed")
# What a top-k pseudo-label's target gives the classes outside its top k (pseudo.soft_targets).
PSEUDO_TAILS = ("uniform", "renormalise")
# Fields that must not change between a run and its resumption from a checkpoint.
RESUME_INVARIANTS = ("model", "labeled", "pseudo", "batch_size", "pseudo_ratio", "seed", "num_classes",
                     "hard_pseudo_labels", "pseudo_tail", "precision", "pseudo_run_id")


class ConfigError(ValueError):
    """A flag or flag combination is wrong; raised before any work starts."""


@dataclasses.dataclass
class TrainConfig:
    model: str
    labeled: str
    model_dir: str
    pseudo: str = None
    # The labeling job (manifest.json run_nonce, or run_id before it existed) --pseudo holds.
    # Filled in from the manifest when not given and recorded in config.json, so a resumed
    # run refuses a relabelled directory.
    pseudo_run_id: str = None
    pseudo_ratio: int = 3
    hard_pseudo_labels: bool = False
    pseudo_tail: str = "uniform"  # PSEUDO_TAILS; no effect on a --full_distribution labeling
    pseudo_loss_weight: float = 1.0
    eval: str = None
    train_split: str = "train"
    eval_split: str = "validation"
    data_dir: str = None
    num_classes: int = None  # required for TFRecord sources; derived for TFDS and folders
    class_names: str = None  # tfds:NAME or a file with one name per line, for the exported teacher
    label_offset: int = 0  # subtracted from `image/class/label` (1 for the TPU reference's ImageNet records)
    labeled_examples: int = None  # records per epoch of the labeled source; counted when not given
    batch_size: int = 4096  # global LABELED batch; each step also sees pseudo_ratio * batch_size pseudo images
    epochs: float = 350.0
    train_steps: int = None  # overrides epochs
    warmup_epochs: float = 5.0
    base_learning_rate: float = 0.1  # at a labeled batch of 256; scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999
    randaugment_magnitude: int = None  # None: the model size's magnitude from models.config
    randaugment_layers: int = None
    crop_min_area: float = 0.08  # Inception crop: 8-100% of the image area
    random_flip: bool = True
    shuffle_buffer: int = 16384
    eval_batch_size: int = 1024
    eval_every: int = 0  # steps; 0 evaluates once, at the end
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 100
    steps_per_execution: int = 1
    micro_batches: int = 1  # gradient accumulation: each replica's share of a step in this many passes
    replica_memory_gb: float = 0.0  # 0: from the TPU's accelerator type (student/device_memory.py)
    strategy: str = "auto"
    tpu: str = None
    precision: str = "float32"
    jit_compile: str = "auto"  # auto, xla or graph (models/hardware.py)
    seed: int = 0
    deterministic: bool = False
    resume_input: str = "skip"

    @property
    def model_config(self):
        overrides = {}
        if self.randaugment_magnitude is not None:
            overrides["randaugment_magnitude"] = self.randaugment_magnitude
        if self.randaugment_layers is not None:
            overrides["randaugment_layers"] = self.randaugment_layers
        return models.config(self.model, **overrides)

    @property
    def pseudo_batch_size(self):
        return self.pseudo_ratio * self.batch_size if self.pseudo else 0

    @property
    def learning_rate(self):
        # Linear scaling (Goyal et al. 2017), as in the reference: 0.1 per 256 LABELED
        # images. The labeled and pseudo losses are each a mean over their own part of the
        # batch, so the pseudo images do not change the gradient's scale.
        return self.base_learning_rate * self.batch_size / 256

    def steps_per_epoch(self):
        return self.labeled_examples / self.batch_size

    def total_steps(self):
        if self.train_steps is not None:
            return self.train_steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch()))

    def warmup_steps(self):
        return min(self.total_steps(), int(round(self.warmup_epochs * self.steps_per_epoch())))

    def to_dict(self):
        record = dataclasses.asdict(self)
        record["model_config"] = self.model_config.to_dict()
        record["derived"] = {"learning_rate": self.learning_rate, "pseudo_batch_size": self.pseudo_batch_size}
        if self.labeled_examples:
            record["derived"].update(total_steps=self.total_steps(), warmup_steps=self.warmup_steps(),
                                     steps_per_epoch=self.steps_per_epoch())
        return record

    def write(self):
        tf.io.gfile.makedirs(self.model_dir)
        with tf.io.gfile.GFile(os.path.join(self.model_dir, CONFIG_FILE), "w") as f:
            f.write(json.dumps(self.to_dict(), indent=2, default=list) + "\n")


def _require(condition, flag, message):
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


# Flags that only apply with --pseudo: a supervised run leaves them at their defaults.
PSEUDO_ONLY = ("pseudo_ratio", "hard_pseudo_labels", "pseudo_tail", "pseudo_loss_weight", "pseudo_run_id")


def validate(config):
    """Checks every flag that can be checked without reading data; raises ConfigError."""
    _require(config.model in models.CONFIGS, "model", f"{config.model!r} is not one of {sorted(models.CONFIGS)}.")
    _require(bool(config.labeled), "labeled", "is required (tfds:NAME, a TFRecord glob or an image folder).")
    _require(bool(config.model_dir), "model_dir", "is required (a local path, gs:// or any TF filesystem).")
    _require(config.batch_size > 0, "batch_size", f"must be positive, got {config.batch_size}.")
    _require(config.pseudo_ratio >= 1, "pseudo_ratio", f"must be a positive integer, got {config.pseudo_ratio}.")
    if not config.pseudo:
        defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
        for flag in PSEUDO_ONLY:
            _require(getattr(config, flag) == defaults[flag], flag,
                     "only applies with --pseudo (pseudo-labeled TFRecords).")
    _require(config.pseudo_loss_weight >= 0, "pseudo_loss_weight", "must be >= 0.")
    _require(config.epochs > 0, "epochs", f"must be positive, got {config.epochs}.")
    _require(config.train_steps is None or config.train_steps > 0, "train_steps", "must be positive.")
    _require(config.warmup_epochs >= 0, "warmup_epochs", "must be >= 0.")
    _require(config.base_learning_rate > 0, "base_learning_rate", "must be positive.")
    _require(0 <= config.momentum < 1, "momentum", "must be in [0, 1).")
    _require(config.weight_decay >= 0, "weight_decay", "must be >= 0.")
    _require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1).")
    _require(0 <= config.ema_decay < 1, "ema_decay", "must be in [0, 1).")
    _require(0 < config.crop_min_area <= 1, "crop_min_area", f"must be in (0, 1], got {config.crop_min_area}.")
    _require(config.labeled_examples is None or config.labeled_examples > 0, "labeled_examples", "must be positive.")
    _require(config.num_classes is None or config.num_classes > 1, "num_classes", "must be at least 2.")
    _require(config.replica_memory_gb >= 0, "replica_memory_gb", f"must be >= 0, got {config.replica_memory_gb}.")
    for flag in ("shuffle_buffer", "eval_batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                 "steps_per_execution", "micro_batches"):
        _require(getattr(config, flag) > 0, flag, f"must be positive, got {getattr(config, flag)}.")
    _require(config.eval_every >= 0, "eval_every", "must be >= 0 (0: evaluate at the end only).")
    for flag in ("checkpoint_every", "log_every") + (("eval_every",) if config.eval_every else ()):
        _require(getattr(config, flag) % config.steps_per_execution == 0, flag,
                 f"{getattr(config, flag)} is not a multiple of --steps_per_execution="
                 f"{config.steps_per_execution}; checkpoints, logs and evals happen between executions.")
    _require(config.strategy in STRATEGIES, "strategy", f"{config.strategy!r} is not one of {STRATEGIES}.")
    _require(not config.tpu or config.strategy in ("auto", "tpu"), "tpu",
             f"names a TPU but --strategy={config.strategy}.")
    _require(config.precision in PRECISIONS, "precision", f"{config.precision!r} is not one of {PRECISIONS}.")
    _require(config.jit_compile in hardware.JIT_CHOICES, "jit_compile",
             f"{config.jit_compile!r} is not one of {hardware.JIT_CHOICES}.")
    _require(config.resume_input in RESUME_INPUT, "resume_input",
             f"{config.resume_input!r} is not one of {RESUME_INPUT}.")
    _require(config.pseudo_tail in PSEUDO_TAILS, "pseudo_tail", f"{config.pseudo_tail!r} is not one of {PSEUDO_TAILS}.")
    _require(config.randaugment_magnitude is None or config.randaugment_magnitude >= 0, "randaugment_magnitude",
             "must be >= 0.")
    _require(config.randaugment_layers is None or config.randaugment_layers >= 0, "randaugment_layers",
             "must be >= 0.")
    if config.pseudo:
        _require(not config.pseudo.startswith("tfds:"), "pseudo",
                 "must be the labeling job's train-*.tfrecord glob, not a TFDS dataset.")


def check_resumable(config):
    """Refuses to resume a model_dir whose recorded config differs in a field that matters."""
    path = os.path.join(config.model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        previous = json.load(f)
    current = config.to_dict()
    for field in RESUME_INVARIANTS:
        if field in previous and previous[field] != current[field]:
            raise ConfigError(f"--{field}={current[field]!r} but {path} (the run being resumed) has "
                              f"{previous[field]!r}; use a new --model_dir or the original value.")

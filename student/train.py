r"""Train a ResNet-RS student on labeled + pseudo-labeled images (or a supervised teacher).

  python -m student.train --model=resnet_rs_152 --labeled=tfds:imagenet2012 \
      --data_dir=gs://BUCKET/tensorflow_datasets --pseudo=gs://BUCKET/labels/train-*.tfrecord \
      --model_dir=gs://BUCKET/runs/student-152 --strategy=tpu --tpu=NAME \
      --precision=bfloat16 --steps_per_execution=100
Smoke run on a CPU (any source kind works, --train_steps overrides --epochs):
  python -m student.train --model=resnet_rs_tiny --labeled=IMAGE_FOLDER --eval=IMAGE_FOLDER \
      --model_dir=/tmp/run --batch_size=8 --train_steps=20 --checkpoint_every=10 --log_every=5

Without --pseudo it trains a supervised teacher. Rerunning the same command on the same
--model_dir resumes from the last checkpoint. At the end model_dir holds model.keras
(EMA weights), config.json, eval_results.json, and teacher/ (a teacher directory for
pipeline.label), so the student becomes the next teacher.
"""

import dataclasses
import json
import math
import os

import tensorflow as tf
from absl import app, flags, logging
from tensorflow.core.framework import summary_pb2

import models
import teacher
from models import cli, hardware
from student import config as config_lib
from student import device_memory, inputs, pseudo, sources
from student import trainer as trainer_lib
from student.config import ConfigError, TrainConfig
from teacher import directory

RESULTS_FILE = "eval_results.json"
PROG = "student.train"

FLAGS = flags.FLAGS
_HELP = {
    "model": "Family member to train (models.config gives its per-size recipe).",
    "labeled": "tfds:NAME, a TFRecord glob (image/encoded, image/class/label), or an image folder.",
    "model_dir": "Checkpoints, summaries, config.json, model.keras, teacher/ (local, gs://, ram://).",
    "pseudo": "Glob of the labeling job's train-*.tfrecord shards; manifest.json must sit beside them.",
    "pseudo_run_id": "The labeling job id (manifest.json run_nonce, else run_id) --pseudo must hold; taken "
                     "from the manifest when not given and recorded in config.json, so a resumed run refuses a "
                     "relabelled directory.",
    "pseudo_ratio": "Pseudo-labeled images per labeled image in every batch (Noisy Student: 3).",
    "hard_pseudo_labels": "Train on the teacher's top-1 class (smoothed by --label_smoothing) instead of its "
                          "soft distribution.",
    "pseudo_tail": "Target of the classes outside a record's top k (records without --full_distribution): "
                   "uniform spreads the teacher's remaining mass (1 - the top k's) evenly over them, so the "
                   "top k keep the teacher's probabilities; renormalise drops it and scales the top k to 1.",
    "pseudo_loss_weight": "Multiplier on the pseudo loss's weight; 1 weighs every pseudo image like a labeled "
                          "one (Noisy Student: labeled mean + pseudo_ratio x pseudo mean).",
    "eval": "Eval source (same kinds as --labeled); for tfds:NAME defaults to its --eval_split.",
    "train_split": "TFDS split for training.",
    "eval_split": "TFDS split for evaluation.",
    "data_dir": "TFDS data_dir (e.g. a manually prepared imagenet2012).",
    "num_classes": "Class count of a TFRecord source (TFDS and folders say it themselves).",
    "class_names": "tfds:NAME or a file with one class name per line, written into the exported teacher.",
    "label_offset": "Subtracted from TFRecord labels (1 for the TPU reference's ImageNet records).",
    "labeled_examples": "Records per epoch of --labeled; counted (one pass) when not given.",
    "batch_size": "Global LABELED batch; every step also takes pseudo_ratio times as many pseudo images.",
    "epochs": "Training length in epochs of the labeled data.",
    "train_steps": "Training length in steps; overrides --epochs.",
    "warmup_epochs": "Linear learning-rate warm-up.",
    "base_learning_rate": "Peak learning rate per 256 labeled images (scaled with --batch_size).",
    "momentum": "SGD momentum.",
    "weight_decay": "The paper's L2 coefficient (not on BatchNorm); see student/recipe.py.",
    "label_smoothing": "Label smoothing of the labeled loss.",
    "ema_decay": "Decay of the EMA of the weights and BatchNorm statistics (BN momentum 0, as the reference) used "
                 "for eval and export; 0 turns the EMA off (BN momentum 0.9 then).",
    "randaugment_magnitude": "Override of the model size's RandAugment magnitude (paper scale, 10 or 15).",
    "randaugment_layers": "Override of the number of RandAugment ops per image (0 turns it off).",
    "crop_min_area": "Smallest area fraction of the Inception-style random crop (paper: 0.08).",
    "random_flip": "Random horizontal flips (off for images whose class depends on orientation).",
    "shuffle_buffer": ("Records per shuffle window of each input stream; windows stay inside a file "
                       "(student/epochs.py)."),
    "eval_batch_size": "Global eval batch.",
    "eval_every": "Evaluate the EMA weights every N steps (0: only at the end).",
    "checkpoint_every": "Checkpoint every N steps.",
    "keep_checkpoints": "Checkpoints to keep.",
    "log_every": "Progress line and TensorBoard scalars every N steps.",
    "steps_per_execution": "Steps per compiled loop call (large on TPU, e.g. 100).",
    "micro_batches": "Gradient accumulation: each replica runs its share of a step in this many passes and "
                     "sums their gradients before one update (same global batch and recipe; BatchNorm statistics "
                     "per pass); for the paper's batch on fewer chips.",
    "replica_memory_gb": "Memory of one replica (a TPU v4+ chip, a v2/v3 core, a GPU) that the batch is checked "
                         "against before compiling; 0: from TPU_ACCELERATOR_TYPE on a TPU VM, else unchecked.",
    "strategy": "tf.distribute strategy; mirrored: all local devices, multi_worker: the cluster in TF_CONFIG.",
    "tpu": "TPU name or grpc:// address; 'local' on a single-host TPU VM, the slice's name for a pod slice.",
    "precision": "bfloat16: bfloat16 compute, float32 variables.",
    "jit_compile": "auto: XLA on GPU/TPU; on a CPU the faster of XLA and TF's graph executor for this model "
                   "and batch, measured before training starts.",
    "seed": "Seed of weights, input order and augmentation.",
    "deterministic": "Enable TF op determinism (bit-reproducible runs and resumption; slower).",
    "resume_input": "skip: resume the input exactly where it stopped; reseed: a fresh order, no replay.",
}
# Flags with a closed set of values are enums: --help lists the values, absl rejects others.
_CHOICES = {"model": list(models.CONFIGS), "strategy": config_lib.STRATEGIES, "precision": config_lib.PRECISIONS,
            "jit_compile": hardware.JIT_CHOICES, "resume_input": config_lib.RESUME_INPUT,
            "pseudo_tail": config_lib.PSEUDO_TAILS}
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
for _field in dataclasses.fields(TrainConfig):
    _default = None if _field.default is dataclasses.MISSING else _field.default
    if _field.name in _CHOICES:
        flags.DEFINE_enum(_field.name, _default, list(_CHOICES[_field.name]), _HELP[_field.name])
    else:
        _DEFINE[_field.type](_field.name, _default, _HELP[_field.name])
flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP)
GROUPS = (
    ("Data", ["labeled", "eval", "train_split", "eval_split", "data_dir", "num_classes", "class_names",
              "label_offset", "labeled_examples"]),
    ("Pseudo labels", ["pseudo", "pseudo_run_id", "pseudo_ratio", "hard_pseudo_labels", "pseudo_tail",
                       "pseudo_loss_weight"]),
    ("Model and output", ["model", "model_dir", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
                          "eval_batch_size"]),
    ("Optimisation", ["batch_size", "micro_batches", "epochs", "train_steps", "warmup_epochs", "base_learning_rate", "momentum",
                      "weight_decay", "label_smoothing", "ema_decay"]),
    ("Augmentation", ["randaugment_magnitude", "randaugment_layers", "crop_min_area", "random_flip",
                      "shuffle_buffer"]),
    ("Runtime", ["strategy", "tpu", "replica_memory_gb", "precision", "jit_compile", "steps_per_execution", "seed", "deterministic",
                 "resume_input", cli.TF_LOGS]),
)


def help_text():
    own = [field.name for field in dataclasses.fields(TrainConfig)] + [cli.TF_LOGS]
    footer = "absl's own flags (logging: --verbosity, --logtostderr, ...) are accepted too; --helpfull lists them."
    return cli.help_text(__doc__, FLAGS, GROUPS, ("model", "labeled", "model_dir"), footer, own=own)


def config_from_flags():
    return TrainConfig(**{field.name: getattr(FLAGS, field.name) for field in dataclasses.fields(TrainConfig)})


def _worker_id(strategy):
    """None for the process that writes summaries, config and exports; else its task id.

    Only a multi-worker job has more than one process; its chief is the `chief` task, or
    worker 0 when the cluster has no chief (TF's convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return None
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = resolver.task_type == "chief" or (
        not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
    return None if chief else f"{resolver.task_type}-{resolver.task_id}"


def _open_inputs(config, strategy):
    """Opens every source and checks it against the flags, before any training work."""
    labeled = sources.open_source(config.labeled, split=config.train_split, data_dir=config.data_dir,
                                  num_classes=config.num_classes, label_offset=config.label_offset)
    if config.num_classes and config.num_classes != labeled.num_classes:
        raise ConfigError(f"--num_classes={config.num_classes} but --labeled={config.labeled} has "
                          f"{labeled.num_classes} classes.")
    config.num_classes = labeled.num_classes
    pseudo_source = None
    if config.pseudo:
        # The labeled source's class order, or the one --class_names gives a source that has none.
        labeled_names = labeled.class_names or (
            directory.class_names_from(config.class_names, labeled.num_classes) if config.class_names else None)
        pseudo_source = pseudo.open_pseudo(config.pseudo, labeled.num_classes, labeled_class_names=labeled_names)
        if labeled_names is None or pseudo_source.manifest["teacher"].get("class_names") is None:
            print(f"warning: the class order of {config.pseudo} could not be checked against --labeled (class "
                  f"names unknown to {'--labeled (pass --class_names)' if labeled_names is None else 'its manifest'})",
                  flush=True)
        if config.pseudo_run_id and config.pseudo_run_id != pseudo_source.run_id:
            raise ConfigError(f"--pseudo_run_id={config.pseudo_run_id} but {config.pseudo} holds labeling run "
                              f"{pseudo_source.run_id!r}: the directory was relabelled since this training run "
                              "started. Train on the original labels, or start a new --model_dir.")
        config.pseudo_run_id = pseudo_source.run_id
    eval_source = None
    if config.eval or config.labeled.startswith("tfds:"):
        eval_source = sources.open_source(config.eval or config.labeled, split=config.eval_split,
                                          data_dir=config.data_dir, num_classes=config.num_classes,
                                          label_offset=config.label_offset, flag="eval")
        if eval_source.num_classes != config.num_classes:
            raise ConfigError(f"--eval has {eval_source.num_classes} classes, --labeled {config.num_classes}.")
    replicas = strategy.num_replicas_in_sync
    for flag in ("batch_size", "eval_batch_size"):
        if getattr(config, flag) % replicas:
            raise ConfigError(f"--{flag}={getattr(config, flag)} is not divisible by the {replicas} replicas "
                              f"of --strategy={config.strategy}.")
    if config.batch_size % (replicas * config.micro_batches):
        raise ConfigError(f"--batch_size={config.batch_size} does not split into --micro_batches="
                          f"{config.micro_batches} equal parts on each of the {replicas} replicas.")
    _check_memory(config, strategy)
    if config.labeled_examples is None:
        config.labeled_examples = labeled.records(0, 1)[1]
    if config.labeled_examples < config.batch_size:
        raise ConfigError(f"--batch_size={config.batch_size} is larger than the {config.labeled_examples} "
                          f"labeled examples of --labeled={config.labeled}.")
    names = labeled.class_names if not config.class_names else None
    class_names = names or directory.class_names_from(config.class_names, config.num_classes)
    return inputs.InputBuilder(config, labeled, pseudo_source, eval_source), class_names


def _check_memory(config, strategy):
    # Before any compile: a TPU compile takes minutes, then fails with out-of-memory.
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    memory = device_memory.replica_memory_bytes(config.replica_memory_gb) if config.replica_memory_gb or on_tpu else None
    if memory is None:
        if on_tpu:
            print(f"replica memory unknown ({device_memory.ACCELERATOR_TYPE_VARIABLE} unset): the batch is not "
                  "checked before compiling; pass --replica_memory_gb to check it", flush=True)
        return
    estimate = device_memory.check(config, strategy.num_replicas_in_sync, memory,
                                   models.create(config.model, config.num_classes))
    print(f"memory per replica: at least {device_memory.describe(estimate['bytes'])} of "
          f"{device_memory.describe(memory)} ({estimate['images_per_micro_batch']} images per micro-batch)",
          flush=True)


def _scalar_metadata():
    """What TensorBoard's scalar plugin expects; tf.summary.scalar writes the same record.

    tf.summary.scalar lives in the tensorboard package, which TensorFlow 2.21 no longer
    installs, so scalars are written with TF's own tf.summary.write plus this metadata:
    the event files are the same and TensorBoard reads them as scalars.
    """
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


def _log(writer, step, values):
    if writer is None:
        return
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_scalar_metadata())
    writer.flush()


def run(config):
    """Trains per `config` (a TrainConfig); returns {"step", "eval", "model", "teacher"}."""
    config_lib.validate(config)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = trainer_lib.make_strategy(config.strategy, config.tpu)
    input_builder, class_names = _open_inputs(config, strategy)
    worker_id = _worker_id(strategy)
    chief = worker_id is None
    config_lib.check_resumable(config)
    if chief:
        config.write()

    if input_builder.pseudo_source is not None:
        source = input_builder.pseudo_source
        print(f"pseudo labels: {source.pattern} from teacher {source.teacher_id} (top_k={source.top_k}, "
              f"temperature={source.manifest['settings'].get('temperature')}, "
              f"{'full distribution' if source.full_distribution else 'top-k, tail ' + config.pseudo_tail}"
              f"{', hard labels' if config.hard_pseudo_labels else ''})", flush=True)
    trainer = trainer_lib.Trainer(config, strategy, input_builder, worker_id)
    timings = f" (measured s per step: {trainer.compile_timings})" if trainer.compile_timings else ""
    print(f"compile mode: {trainer.compile_mode}{timings}", flush=True)
    start_step = trainer.restore()
    total = config.total_steps()
    if input_builder.eval_source is None:
        print("no eval source: pass --eval (or a tfds: --labeled) to measure top-1/top-5", flush=True)
    if start_step:
        print(f"resumed from step {start_step} of {total} ({trainer.latest_checkpoint})", flush=True)
    train_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) if chief else None
    eval_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "eval")) if chief else None

    def evaluate(use_ema=True):
        if input_builder.eval_source is None:
            return None
        metrics = trainer.evaluate(strategy.distribute_datasets_from_function(input_builder.eval_dataset), use_ema)
        _log(eval_writer, trainer.step, {k: v for k, v in metrics.items() if k != "examples"})
        print(f"eval step {trainer.step}: top-1 {metrics['top_1']:.4f} top-5 {metrics['top_5']:.4f} "
              f"loss {metrics['loss']:.4f} ({metrics['examples']} images, EMA weights)", flush=True)
        return metrics

    if start_step < total:
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda context: input_builder.train_dataset(context, start_step)))
        window_steps, window_seconds, warmed_up = 0, 0.0, False
        while trainer.step < total:
            step = trainer.step
            num_steps = min(config.steps_per_execution, total - step)
            try:
                labeled_loss, pseudo_loss, seconds = trainer.train_block(iterator, num_steps)
            except tf.errors.ResourceExhaustedError as error:  # what device_memory's lower bound let through
                images = trainer.images_per_step // strategy.num_replicas_in_sync // config.micro_batches
                raise ConfigError(
                    f"out of device memory in steps {step + 1}-{step + num_steps} with {images} images per replica "
                    f"and pass (--batch_size={config.batch_size}, --pseudo_ratio={config.pseudo_ratio}, "
                    f"--micro_batches={config.micro_batches}, {strategy.num_replicas_in_sync} replicas): raise "
                    "--micro_batches (same global batch) or lower --batch_size. The device said: "
                    f"{str(error.message).splitlines()[0][:300]}") from error
            step += num_steps
            if not (math.isfinite(labeled_loss) and math.isfinite(pseudo_loss)):
                # Nothing from here on is saved or exported: the weights may be NaN already.
                steps = f"step {step}" if num_steps == 1 else f"steps {step - num_steps + 1}-{step} (mean)"
                raise trainer_lib.NonFiniteError(
                    f"the loss is not finite at {steps} of {total}: labeled loss {labeled_loss}, pseudo loss "
                    f"{pseudo_loss}. Training stopped without checkpointing or exporting; "
                    f"{trainer.checkpoint_directory} keeps the last finite checkpoint "
                    f"({tf.train.latest_checkpoint(trainer.checkpoint_directory) or 'none yet'}). Lower "
                    "--base_learning_rate or check the inputs, then rerun to resume from it.")
            # The first call of a process traces and compiles; its time would understate
            # images/s, so it is measured only when nothing else is.
            if warmed_up or step % config.log_every == 0 or step == total:
                window_steps, window_seconds = window_steps + num_steps, window_seconds + seconds
            warmed_up = True
            if step % config.log_every == 0 or step == total:
                images_per_second = window_steps * trainer.images_per_step / window_seconds
                values = {"loss/labeled": labeled_loss, "learning_rate": trainer.learning_rate(),
                          "images_per_second": images_per_second}
                if config.pseudo:
                    values["loss/pseudo"] = pseudo_loss
                _log(train_writer, step, values)
                remaining = (total - step) * window_seconds / window_steps
                print(f"step {step}/{total} ({100 * step / total:.1f}%) labeled loss {labeled_loss:.4f}"
                      + (f" pseudo loss {pseudo_loss:.4f}" if config.pseudo else "")
                      + f" lr {values['learning_rate']:.5f} {images_per_second:.1f} images/s"
                      f" eta {remaining / 60:.1f} min", flush=True)
                window_steps, window_seconds = 0, 0.0
            if step % config.checkpoint_every == 0 or step == total:
                trainer.save()
            if config.eval_every and step % config.eval_every == 0 and step < total:
                evaluate()

    final_model = trainer.final_model()  # the training model now holds the EMA weights too
    result = {"step": trainer.step, "eval": evaluate(use_ema=False), "model": None, "teacher": None}
    if chief:
        result["model"] = os.path.join(config.model_dir, directory.TRAINED_KERAS_FILE)
        final_model.save(result["model"])
        result["teacher"] = os.path.join(config.model_dir, "teacher")
        teacher.export(final_model, config.model, result["teacher"], class_names=class_names,
                       source=f"training-run:{config.model_dir}", overwrite=True)
        with tf.io.gfile.GFile(os.path.join(config.model_dir, RESULTS_FILE), "w") as f:
            f.write(json.dumps({"step": result["step"], "eval": result["eval"]}, indent=2) + "\n")
    trainer.close()
    return result


def _main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r}; every setting is a --flag.")
    if not FLAGS["verbosity"].present:
        # TensorFlow's INFO lines (SavedModel export, checkpoint sharding) would bury the
        # progress lines; --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
    result = run(config_from_flags())
    print(json.dumps({"step": result["step"], "eval": result["eval"], "teacher": result["teacher"]}))


def main():
    cli.run_main(PROG, lambda: app.run(_main, flags_parser=cli.absl_flags_parser(PROG, help_text)),
                 usage_errors=(ConfigError,), failures=(trainer_lib.NonFiniteError,))


if __name__ == "__main__":
    main()

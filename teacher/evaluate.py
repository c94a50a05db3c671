r"""Evaluate a teacher (or a training run's exported teacher) on labeled images.

  python -m teacher.evaluate --teacher=TEACHER_DIR --data=FOLDER
  python -m teacher.evaluate --model_dir=TRAINING_RUN --data=tfds:imagenet2012 --data_dir=DIR
  python -m teacher.evaluate --teacher=TEACHER_DIR --data=tfds:cifar10/test --format=json
  python -m teacher.evaluate --teacher=TEACHER_DIR --data='gs://B/val-*.tfrecord' --label_offset=1

--data is read as student.train reads labeled data (student/sources.py): an image folder
with one subfolder per class, `tfds:NAME[/SPLIT]` (the split defaults to --split; a
dataset config needs the split inline: tfds:NAME/CONFIG/SPLIT), or a TFRecord glob of
tf.train.Example with `image/encoded` and `image/class/label`. Classes are matched to the
teacher by name: every subfolder name or TFDS label name must be one of the teacher's
class_names (a subset is fine), else the run stops naming the strangers. TFRecord labels
name no class, so they are taken as the teacher's class indices (minus --label_offset).
--model_dir=RUN evaluates RUN/teacher, the teacher student.train exports at the end.

Reports top-1 and top-5 accuracy (top-k with k capped at the teacher's class count), the
expected calibration error of the top-1 confidence over 15 equal-width bins (as the
labeling report's holdout section), the mean negative log-likelihood of the true class in
nats (probabilities clipped to 1e-7, as Keras does), and the number of images evaluated.
Images that do not decode are left out and counted. The teacher runs at temperature 1: the
distribution its confidence comes from.
With --limit, records are read in a fixed shuffled order so that the first N of an image
folder (stored class by class) span its classes.

Exit status: 0 on success, 2 for a usage error (a bad or missing flag), 1 when the teacher
or the data cannot be evaluated (not found, classes that do not match, no images); either
error is one line `teacher.evaluate: error: MESSAGE` on stderr (models/cli.py).
"""

import json
import os
import sys

from absl import flags

from models import cli

CALIBRATION_BINS = 15  # the labeling report's holdout ECE uses the same bins
TOP_K = 5
FORMATS = ("text", "json")
PROG = "teacher.evaluate"
_ORDER_SEED = (0, 0)  # fixed: --limit samples the same images on every run


class EvaluateError(Exception):
    """The teacher or the data cannot be evaluated (exit status 1)."""


class UsageError(EvaluateError, cli.UsageError):
    """A flag is missing, unknown or malformed (exit status 2): a cli.UsageError, so cli.run_main
    exits 2 for it before its EvaluateError side would exit 1."""


def define_flags():
    """This command's flags, on a private FlagValues: importing the module defines no global
    flags (teacher.export's would clash), and tests can run it many times in one process."""
    values = flags.FlagValues()
    f = dict(flag_values=values)
    flags.DEFINE_string("teacher", None, "Teacher directory (local or gs://), as `python -m teacher.export` "
                        "writes it.", **f)
    flags.DEFINE_string("model_dir", None, "A student.train model_dir: evaluates the teacher it exported to "
                        "MODEL_DIR/teacher. Give this or --teacher.", **f)
    flags.DEFINE_string("data", None, "Labeled images: an image folder (one subfolder per class, named as the "
                        "teacher's classes), tfds:NAME[/SPLIT], or a TFRecord glob.", **f)
    flags.DEFINE_string("split", "validation", "TFDS split when --data=tfds:NAME names none.", **f)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (e.g. a manually prepared imagenet2012).", **f)
    flags.DEFINE_integer("label_offset", 0, "Subtracted from TFRecord labels (1 for ImageNet's 1-based "
                         "records).", **f)
    flags.DEFINE_integer("limit", None, "Evaluate at most this many records.", lower_bound=1, **f)
    flags.DEFINE_integer("batch_size", 64, "Images per teacher call (the compiled step's fixed batch).",
                         lower_bound=1, **f)
    flags.DEFINE_enum("format", "text", FORMATS, "text: a table; json: the metrics as one JSON object.", **f)
    flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP, **f)
    return values


# --help's sections; a flag missing here is listed under "Other flags" (models/cli.py).
GROUPS = (
    ("Teacher (exactly one of --teacher, --model_dir)", ["teacher", "model_dir", "batch_size"]),
    ("Data", ["data", "split", "data_dir", "label_offset", "limit"]),
    ("Output", ["format"]),
    ("Runtime", [cli.TF_LOGS]),
)


def teacher_path_of(teacher_dir, model_dir):
    """The teacher directory named by exactly one of --teacher and --model_dir."""
    if bool(teacher_dir) == bool(model_dir):
        raise UsageError("pass exactly one of --teacher=TEACHER_DIR or --model_dir=TRAINING_RUN.")
    if teacher_dir:
        return teacher_dir
    import tensorflow as tf  # deferred: --help and usage errors stay fast

    path = os.path.join(model_dir, "teacher")
    if not tf.io.gfile.isdir(path):
        raise EvaluateError(f"--model_dir={model_dir} has no teacher/ directory (student.train exports it when "
                            "training finishes); pass --teacher=TEACHER_DIR for a teacher elsewhere.")
    return path


def load_teacher(path, flag, batch_size):
    """A teacher whose teacher.json names its classes: data classes are matched by those names."""
    import teacher as teacher_lib
    from teacher import metadata as teacher_metadata

    # teacher.json first, as pipeline.report.holdout does: a bare SavedModel (which teacher.load would
    # accept) runs whatever graph it holds and says nothing about its class names.
    try:
        teacher_metadata.read(path)
        model = teacher_lib.load(path, batch_size=batch_size)
    except teacher_lib.TeacherError as error:
        raise EvaluateError(f"--{flag}={path}: {error}") from error
    if model.metadata is None:  # teacher.json vanished between the check and the load
        raise EvaluateError(f"--{flag}={path} has no teacher.json, so its class names are unknown.")
    return model


def parse_tfds(spec, split, split_given):
    """(tfds:NAME, split) from `tfds:NAME[/SPLIT]` and --split."""
    name, slash, inline = spec[len("tfds:"):].rpartition("/")
    if not slash:
        name, inline = inline, None
    if not name:
        raise UsageError(f"--data={spec}: expected tfds:NAME or tfds:NAME/SPLIT, e.g. tfds:imagenet2012/validation.")
    if inline and split_given and inline != split:
        raise UsageError(f"--data={spec} names split {inline!r} but --split={split}; give the split once (a "
                         "dataset config needs it inline: tfds:NAME/CONFIG/SPLIT).")
    return f"tfds:{name}", inline or split


def open_data(data, split, data_dir, label_offset, num_classes):
    """The LabeledSource `data` names; `num_classes` (the teacher's) sizes a TFRecord source."""
    from student import sources
    from student.config import ConfigError

    try:
        source = sources.open_source(data, split=split, data_dir=data_dir, num_classes=num_classes,
                                     label_offset=label_offset, flag="data")
    except ConfigError as error:
        raise EvaluateError(str(error)) from error
    if source.class_names is not None and label_offset:
        raise UsageError(f"--label_offset applies to TFRecord data; --data={data} names its classes.")
    return source


def _listing(names, shown=10):
    return ", ".join(repr(name) for name in names[:shown]) + (" ..." if len(names) > shown else "")


def class_index_map(source, class_names):
    """numpy map from the source's labels to the teacher's class indices, or None for TFRecords."""
    import numpy as np

    if source.class_names is None:
        return None
    index_of = {name: index for index, name in enumerate(class_names)}
    strangers = [name for name in source.class_names if name not in index_of]
    if strangers:
        raise EvaluateError(f"--data={source.description}: {len(strangers)} of its {len(source.class_names)} classes "
                            f"are not among the teacher's {len(class_names)} class names: {_listing(strangers)}. "
                            f"The teacher's classes are {_listing(class_names)}. Name the data's classes "
                            "(subfolders) as the teacher's, or export the teacher with matching --class_names.")
    return np.array([index_of[name] for name in source.class_names], np.int64)


class Accumulator:
    """Streaming metrics: Keras metrics for top-1, top-k and NLL; per-image confidence and top-1 hit
    for the reliability bins (two numbers an image, so any data set the teacher can afford fits)."""

    def __init__(self, top_k):
        import keras

        self.top_k = top_k
        self.top_1_metric = keras.metrics.SparseCategoricalAccuracy()
        self.top_k_metric = keras.metrics.SparseTopKCategoricalAccuracy(k=top_k)
        # Probabilities in, natural log: the mean NLL of the true class. Keras clips probabilities
        # to [1e-7, 1 - 1e-7], so an image the teacher calls impossible adds 16.1 nats, not inf.
        self.nll_metric = keras.metrics.SparseCategoricalCrossentropy(from_logits=False)
        self.confidence, self.correct = [], []

    def update(self, distribution, truth):
        for metric in (self.top_1_metric, self.top_k_metric, self.nll_metric):
            metric.update_state(truth, distribution)
        self.confidence.append(distribution.max(axis=1))
        self.correct.append(distribution.argmax(axis=1) == truth)

    def result(self):
        import numpy as np

        from pipeline.report.holdout import reliability  # the report's reliability bins and ECE, shared

        confidence = np.concatenate(self.confidence).astype(np.float64)
        _, error = reliability(confidence, np.concatenate(self.correct), CALIBRATION_BINS)
        return {"count": int(len(confidence)), "top_1_accuracy": float(self.top_1_metric.result()),
                "top_k": self.top_k, "top_k_accuracy": float(self.top_k_metric.result()),
                "expected_calibration_error": float(error), "calibration_bins": CALIBRATION_BINS,
                "nll": float(self.nll_metric.result()), "mean_confidence": float(confidence.mean())}


def evaluate(teacher_path, data, split="validation", data_dir=None, label_offset=0, limit=None, batch_size=64,
             teacher_flag="teacher"):
    """The metrics dict for the teacher at `teacher_path` on `data` (see the module docstring);
    `data` is tfds:NAME (with `split`), an image folder or a TFRecord glob."""
    import numpy as np
    import tensorflow as tf

    from models import preprocessing
    from student.config import ConfigError

    model = load_teacher(teacher_path, teacher_flag, batch_size)
    meta = model.metadata
    source = open_data(data, split, data_dir, label_offset, meta.num_classes)
    to_teacher = class_index_map(source, meta.class_names)
    try:
        records_for_epoch, _ = source.records(0, 1)
    except ConfigError as error:  # e.g. a TFDS split the dataset does not have
        raise EvaluateError(str(error)) from error
    records = records_for_epoch(tf.constant(_ORDER_SEED, tf.int64))
    if limit:
        records = records.take(limit)
    accumulator = Accumulator(min(TOP_K, meta.num_classes))
    images, truths, unreadable = [], [], 0

    def flush():
        predictions = model.predict(images, top_k=accumulator.top_k, full_distribution=True)
        accumulator.update(predictions.distribution, np.asarray(truths, np.int64))
        images.clear()
        truths.clear()

    for record in records.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        label = int(record["label"])
        if to_teacher is None and not 0 <= label < meta.num_classes:
            raise EvaluateError(f"--data={data}: a record's label {label + label_offset} minus "
                                f"--label_offset={label_offset} is outside the teacher's "
                                f"{meta.num_classes} classes (ImageNet TFRecords count from 1: --label_offset=1).")
        try:
            images.append(preprocessing.decode_image(record["image"]).numpy())
        except (tf.errors.OpError, ValueError):  # not an image: counted, not fatal
            unreadable += 1
            continue
        truths.append(label if to_teacher is None else int(to_teacher[label]))
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    if not accumulator.confidence:
        raise EvaluateError(f"--data={source.description}: no image could be evaluated ({unreadable} unreadable).")
    return {"teacher": teacher_path, "teacher_id": meta.teacher_id, "model_name": meta.model_name,
            "teacher_classes": meta.num_classes, "data": source.description,
            "data_classes": len(source.class_names) if source.class_names else None,
            **accumulator.result(), "unreadable": unreadable, "limit": limit}


def format_text(metrics):
    k = metrics["top_k"]
    capped = f"  (top-{TOP_K} capped at the teacher's {metrics['teacher_classes']} classes)" if k < TOP_K else ""
    classes = (f"{metrics['data_classes']} of the teacher's {metrics['teacher_classes']} classes"
               if metrics["data_classes"] else "labels taken as the teacher's class indices")
    rows = [
        ("teacher", f"{metrics['teacher']} ({metrics['model_name']}, {metrics['teacher_classes']} classes, "
                    f"id {metrics['teacher_id'][:12]})"),
        ("data", f"{metrics['data']}, {classes}"),
        ("images", f"{metrics['count']}" + (f" ({metrics['unreadable']} unreadable, left out)"
                                            if metrics["unreadable"] else "")
         + (f" (--limit={metrics['limit']})" if metrics["limit"] else "")),
        ("top-1 accuracy", f"{metrics['top_1_accuracy']:.4f}"),
        (f"top-{k} accuracy", f"{metrics['top_k_accuracy']:.4f}{capped}"),
        (f"ECE ({metrics['calibration_bins']} bins)", f"{metrics['expected_calibration_error']:.4f}"),
        ("NLL (nats)", f"{metrics['nll']:.4f}"),
        ("mean confidence", f"{metrics['mean_confidence']:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "".join(f"{name.ljust(width)}  {value}\n" for name, value in rows)


def run(argv):
    """`argv` without the program name -> prints the metrics (text or JSON) and returns them.

    Returns None after --help. Raises UsageError for bad flags, EvaluateError for the rest.
    """
    values = define_flags()
    # --helpfull too, as before: the private FlagValues holds no absl flags for it to add.
    if cli.wants_help(argv) or "--helpfull" in argv:
        sys.stdout.write(cli.help_text(__doc__, values, GROUPS, ("data",)))
        return None
    cli.parse_own_flags(values, PROG, argv, UsageError)
    if not values.data:
        raise UsageError("--data is required: an image folder, tfds:NAME[/SPLIT] or a TFRecord glob.")
    data, split = values.data, values.split
    if data.startswith("tfds:"):
        data, split = parse_tfds(data, split, values["split"].present)
    elif values.data_dir:
        raise UsageError(f"--data_dir goes with --data=tfds:NAME, not --data={data}.")
    teacher_path = teacher_path_of(values.teacher, values.model_dir)
    metrics = evaluate(teacher_path, data, split, values.data_dir, values.label_offset, values.limit,
                       values.batch_size, "teacher" if values.teacher else "model_dir")
    text = json.dumps(metrics, indent=1) + "\n" if values.format == "json" else format_text(metrics)
    sys.stdout.write(text)
    return metrics


def main():
    cli.run_main(PROG, lambda: run(sys.argv[1:]), failures=(EvaluateError,))


if __name__ == "__main__":
    main()

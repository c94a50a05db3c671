r"""Write a self-describing teacher directory.

From a training run (a student.train model_dir, or a .keras file):
  python -m teacher.export --model_dir=DIR --output=TEACHER_DIR [--class_names=...]
From published weights, or randomly initialised (smoke tests, benchmarks):
  python -m teacher.export --model=resnet_rs_50 [--weights=FILE] --output=TEACHER_DIR

--class_names is `tfds:NAME` (the label feature of a TFDS dataset, e.g. tfds:imagenet2012)
or a text file with one name per line; without it classes are named class_0, class_1, ...
Works on local paths and any TF filesystem (gs://, ram://).
"""

import sys

from absl import app, flags

import models
from models import cli
from teacher import directory
from teacher.metadata import TeacherError

PROG = "teacher.export"
FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A student.train model_dir, or a .keras file.")
flags.DEFINE_enum("model", None, list(models.CONFIGS), "Family member to export without a training run.")
flags.DEFINE_string("weights", None, "Published weights for --model (.h5, .keras, TF checkpoint prefix); "
                    "without them the teacher is randomly initialised, and pipeline.label refuses it unless "
                    "--allow_random_teacher.")
flags.DEFINE_integer("num_classes", 1000, "Classes of --model (ignored with --model_dir).")
flags.DEFINE_string("class_names", None, "tfds:NAME or a file with one class name per line.")
flags.DEFINE_string("output", None, "The teacher directory to write (local, gs://, ram://).")
flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP)
GROUPS = (
    ("Source (exactly one of --model_dir, --model)", ["model_dir", "model", "weights", "num_classes"]),
    ("Output", ["output", "class_names", "overwrite"]),
    ("Runtime", [cli.TF_LOGS]),
)


def help_text():
    footer = "absl's own flags (logging: --verbosity, --logtostderr, ...) are accepted too; --helpfull lists them."
    own = [flag.name for flag in FLAGS.get_flags_for_module(sys.modules[__name__])]
    return cli.help_text(__doc__, FLAGS, GROUPS, ("output",), footer, own=own)


def run(argv=None):
    if len(argv or ()) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r}; every setting is a --flag.")
    if not FLAGS.output:
        raise cli.UsageError("--output is required.")
    if bool(FLAGS.model_dir) == bool(FLAGS.model):
        raise cli.UsageError("Pass exactly one of --model_dir (a training run) or --model (a family member).")
    if FLAGS.weights and not FLAGS.model:
        raise cli.UsageError("--weights goes with --model, not --model_dir.")
    if FLAGS.model and FLAGS.class_names:
        directory.class_names_from(FLAGS.class_names, FLAGS.num_classes)  # fail before building
    if FLAGS.model_dir:
        model, name = directory.model_from_training_run(FLAGS.model_dir)
        source, random_init = f"training-run:{FLAGS.model_dir}", False
    else:
        from teacher import weights  # deferred: h5py is only needed for imports

        name = FLAGS.model
        model = models.create(name, num_classes=FLAGS.num_classes)
        random_init = not FLAGS.weights
        source = "random-init" if random_init else f"published-weights:{FLAGS.weights}"
        if FLAGS.weights:
            weights.load_published_weights(model, FLAGS.weights)
    meta = directory.export(model, name, FLAGS.output, FLAGS.class_names, source, random_init, FLAGS.overwrite)
    print(f"teacher {meta.teacher_id} ({name}, {meta.num_classes} classes, {source}) -> {FLAGS.output}")


def main():
    # Every TeacherError here is about what the flags name (--model_dir is no training run,
    # --output exists, --class_names disagrees): a usage error.
    cli.run_main(PROG, lambda: app.run(run, flags_parser=cli.absl_flags_parser(PROG, help_text)),
                 usage_errors=(TeacherError,))


if __name__ == "__main__":
    main()

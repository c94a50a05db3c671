"""The labeling job's flags, and their checks before any work starts.

Job flags are absl flags on a private FlagValues (so the job can be run many times in one
process, and never clashes with another module's flags); everything absl does not know is
handed to Beam's PipelineOptions unchanged, after checking Beam knows it too, because Beam
itself only warns about an unknown option and would run the job without it.
--help shows these flags in GROUPS (models/cli.py has the conventions every CLI shares).
"""

import dataclasses
import hashlib
import json

from absl import flags
from apache_beam.io.filesystems import FileSystems

from models import cli
from pipeline import beam_flags, commit, decode, sources

PROG = "pipeline.label"
REQUIRED = ("teacher", "input", "output")
# A permission, not a labeling setting: it changes no label, so neither the run id nor the
# manifest's settings record it (the manifest's teacher.random_init says what matters).
# --progress_every_s only changes what the job prints while it runs.
NOT_SETTINGS = ("allow_random_teacher", "progress_every_s")


class UsageError(cli.UsageError):
    """A flag is missing, unknown, out of range or contradicts another; names the flag."""


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    teacher: str
    input: str
    output: str
    input_format: str = "auto"
    image_feature: str = None
    data_dir: str = None
    tfds_ranges: int = 64
    top_k: int = 0  # 0: min(5, the teacher's class count)
    temperature: float = 1.0
    min_confidence: float = 0.3
    per_class: int = 0
    balance: str = "none"
    dedup: bool = False
    full_distribution: bool = False
    max_side: int = 0
    max_pixels: int = 100_000_000
    max_bytes: int = sources.DEFAULT_MAX_BYTES
    decode_memory_mb: int = decode.DEFAULT_DECODE_MEMORY_MB
    num_shards: int = 16
    rejected_shards: int = 1
    min_batch_size: int = 1
    max_batch_size: int = 32
    precision: str = "float32"
    jit_compile: str = "auto"
    teacher_strategy: str = "auto"
    tpu: str = None
    share_model_across_processes: bool = False
    thumbnails_per_class: int = 4
    overwrite: bool = False
    allow_random_teacher: bool = False
    progress_every_s: float = 10.0

    def run_id(self):
        """Deterministic id of a run's settings (no wall clock): names its staging dir."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_SETTINGS}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def to_manifest(self):
        keep = dataclasses.asdict(self)
        for name in ("teacher", "input", "output", "overwrite", *NOT_SETTINGS):
            keep.pop(name)
        return keep


def define_flags():
    values = flags.FlagValues()
    defaults = LabelSettings(teacher="", input="", output="")
    f = dict(flag_values=values)
    flags.DEFINE_string("teacher", None, "Teacher directory (python -m teacher.export).", **f)
    flags.DEFINE_string("input", None, "Image glob, list file, TFRecord glob, or tfds:NAME/SPLIT.", **f)
    flags.DEFINE_string("output", None, "OUT_DIR for records, rejections, manifest and stats (local or gs://).", **f)
    flags.DEFINE_enum("input_format", "auto", sources.INPUT_FORMATS, "Kind of --input; auto guesses.", **f)
    flags.DEFINE_string("image_feature", None, "Image bytes feature of TFRecord/TFDS input "
                        "(default image/encoded, or image for TFDS).", **f)
    flags.DEFINE_string("data_dir", None, "TFDS data_dir of a prepared dataset.", **f)
    flags.DEFINE_integer("tfds_ranges", defaults.tfds_ranges, "Parallel read ranges for TFDS input.", **f)
    flags.DEFINE_integer("top_k", defaults.top_k, "Classes kept per image (0: 5, or every class of a "
                         "teacher with fewer).", **f)
    flags.DEFINE_float("temperature", defaults.temperature, "Softmax temperature of the soft labels.", **f)
    flags.DEFINE_float("min_confidence", defaults.min_confidence,
                       "Drop labels whose max probability is below this (Noisy Student: 0.3).", **f)
    flags.DEFINE_integer("per_class", defaults.per_class,
                         "Keep at most this many images per class, most confident first (0: no cap; "
                         "Noisy Student: 130000).", **f)
    flags.DEFINE_enum("balance", None, ["duplicate", "none"], "Fill classes below --per_class by duplicating "
                      "their images (default: duplicate when --per_class is set).", **f)
    flags.DEFINE_bool("dedup", defaults.dedup, "Label identical image content once; reject the copies.", **f)
    flags.DEFINE_bool("full_distribution", defaults.full_distribution, "Also store every class probability.", **f)
    flags.DEFINE_integer("max_side", defaults.max_side, "Downscale stored images to this side (0: keep).", **f)
    flags.DEFINE_integer("max_pixels", defaults.max_pixels, "Reject images with more pixels, before decoding.", **f)
    flags.DEFINE_integer("decode_memory_mb", defaults.decode_memory_mb, "Decode memory per worker process, "
                         "shared by its threads: a decode waits until its estimated peak fits; an image that "
                         "alone needs more is rejected (too_much_memory).", **f)
    flags.DEFINE_integer("max_bytes", defaults.max_bytes, "Reject input images of more bytes, before reading them "
                         "(files: from the listing's size, and no read goes further).", **f)
    flags.DEFINE_integer("num_shards", defaults.num_shards, "train-* shards.", **f)
    flags.DEFINE_integer("rejected_shards", defaults.rejected_shards, "rejected-* shards.", **f)
    flags.DEFINE_integer("min_batch_size", defaults.min_batch_size, "Smallest inference batch.", **f)
    flags.DEFINE_integer("max_batch_size", defaults.max_batch_size, "Largest inference batch (compiled size).", **f)
    flags.DEFINE_enum("precision", defaults.precision, ["float32", "bfloat16"], "Teacher compute precision.", **f)
    flags.DEFINE_enum("jit_compile", defaults.jit_compile, ["auto", "xla", "graph"],
                      "Teacher compile mode. auto: XLA on GPU/TPU; on a CPU the faster of XLA and TF's graph "
                      "executor, measured when each worker loads the teacher.", **f)
    flags.DEFINE_enum("teacher_strategy", defaults.teacher_strategy, ["auto", "cpu", "gpu", "tpu"],
                      "tf.distribute strategy of the teacher on each worker.", **f)
    flags.DEFINE_string("tpu", None, "TPU name for --teacher_strategy=tpu ('local' on a TPU VM worker).", **f)
    flags.DEFINE_bool("share_model_across_processes", False,
                      "One teacher per worker VM instead of one per process (large teachers).", **f)
    flags.DEFINE_integer("thumbnails_per_class", defaults.thumbnails_per_class,
                         "Most and least confident examples per class kept for the report.", **f)
    flags.DEFINE_bool("overwrite", False, "Replace a committed run in --output (atomically, at commit).", **f)
    flags.DEFINE_float("progress_every_s", defaults.progress_every_s, "Local runs: print images done / total, "
                       "img/s and ETA to stderr at most this often (0: never). Remote runners: the Progress/* "
                       "counters.", **f)
    flags.DEFINE_bool("allow_random_teacher", False, "Label with a randomly initialised teacher (teacher.json "
                      "random_init: true), whose labels are noise: for smoke tests and benchmarks only.", **f)
    flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP, **f)
    return values


# --help's sections; a flag missing here is listed under "Other flags" (models/cli.py).
GROUPS = (
    ("Input", ["input", "input_format", "image_feature", "data_dir", "tfds_ranges", "max_bytes", "max_pixels",
               "decode_memory_mb"]),
    ("Teacher", ["teacher", "allow_random_teacher", "top_k", "temperature", "full_distribution"]),
    ("Selection", ["min_confidence", "per_class", "balance", "dedup"]),
    ("Output", ["output", "overwrite", "num_shards", "rejected_shards", "max_side", "thumbnails_per_class"]),
    ("Runtime", ["teacher_strategy", "tpu", "precision", "jit_compile", "min_batch_size", "max_batch_size",
                 "share_model_across_processes", "progress_every_s", cli.TF_LOGS]),
)


def help_text(doc):
    """--help: `doc` (the job's usage), then the job's own flags by group, then how to see Beam's."""
    values = define_flags()
    groups = [(title, [name for name in names if name in values]) for title, names in GROUPS]
    return cli.help_text(doc, values, groups, REQUIRED, beam_flags.FOOTER)


def parse(argv):
    """argv (without the program name) -> (LabelSettings, Beam args). Raises UsageError."""
    values = define_flags()
    try:
        beam_args = values([PROG, *argv], known_only=True)[1:]
    except flags.Error as error:
        raise UsageError(cli.flag_error_message(error, values)) from error
    unknown = beam_flags.unknown(beam_args)
    if unknown:
        candidates = cli.flag_names(values) + beam_flags.option_names() + [beam_flags.HELP_FLAG[2:]]
        raise UsageError(cli.unknown_flags_message(unknown, candidates))
    for name in REQUIRED:
        if not values[name].value:
            raise UsageError(f"--{name} is required.")
    fields = {f.name for f in dataclasses.fields(LabelSettings)}
    chosen = {name: values[name].value for name in fields if name in values}
    if chosen["balance"] is None:
        chosen["balance"] = "duplicate" if chosen["per_class"] else "none"
    return LabelSettings(**chosen), beam_args


def resolve(settings, num_classes):
    """Fills defaults that depend on the teacher."""
    if not settings.top_k:
        settings = dataclasses.replace(settings, top_k=min(5, num_classes))
    return settings


def validate(settings, num_classes):
    """Range and consistency checks, and that the input exists and the output may be written."""
    s = settings
    checks = [
        (1 <= s.top_k <= num_classes, f"--top_k={s.top_k} must be between 1 and the teacher's {num_classes} classes"),
        (s.temperature > 0, f"--temperature={s.temperature} must be > 0"),
        (0.0 <= s.min_confidence <= 1.0, f"--min_confidence={s.min_confidence} must be in [0, 1]"),
        (s.per_class >= 0, f"--per_class={s.per_class} must be >= 0"),
        (not (s.balance == "duplicate" and not s.per_class),
         "--balance=duplicate needs --per_class (the count each class is filled to)"),
        (s.max_side >= 0, f"--max_side={s.max_side} must be >= 0"),
        (s.max_pixels > 0, f"--max_pixels={s.max_pixels} must be > 0"),
        (s.decode_memory_mb > 0, f"--decode_memory_mb={s.decode_memory_mb} must be > 0"),
        # 2 GiB - 1: a protobuf message (the record that stores the image) cannot be larger.
        (0 < s.max_bytes < 1 << 31, f"--max_bytes={s.max_bytes} must be between 1 and {(1 << 31) - 1}"),
        (s.num_shards >= 1 and s.rejected_shards >= 1, "--num_shards and --rejected_shards must be >= 1"),
        (1 <= s.min_batch_size <= s.max_batch_size,
         f"--min_batch_size={s.min_batch_size} must be >= 1 and <= --max_batch_size={s.max_batch_size}"),
        (s.thumbnails_per_class >= 0, "--thumbnails_per_class must be >= 0"),
        (s.tfds_ranges >= 1, "--tfds_ranges must be >= 1"),
        (s.progress_every_s >= 0, f"--progress_every_s={s.progress_every_s} must be >= 0 (0: no progress)"),
        (not (s.tpu and s.teacher_strategy not in ("auto", "tpu")),
         f"--tpu={s.tpu} contradicts --teacher_strategy={s.teacher_strategy}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    _check_input(s)
    claims = commit.pending_claims(s.output)
    if claims:  # checked here too, so a stale claim fails this run before, not after, its inference
        raise UsageError(f"--output={s.output} holds {claims[0]}: another labeling job is committing there, or one "
                         "was killed mid-commit. If no other job is running, delete that file and rerun with "
                         "--overwrite.")
    if commit.existing_outputs(s.output) and not s.overwrite:
        raise UsageError(f"--output={s.output} already holds a labeling run; pass --overwrite to replace it "
                         "(the new run replaces it only once it has finished).")


def _check_input(s):
    kind = sources.guess_format(s.input) if s.input_format == "auto" else s.input_format
    if kind == "tfds":
        try:
            sources.parse_tfds(s.input)
        except ValueError as error:
            raise UsageError(str(error)) from error
        return
    if s.input.startswith("tfds:"):
        raise UsageError(f"--input={s.input} is a TFDS name but --input_format={s.input_format}.")
    if kind == "list":
        if not FileSystems.exists(s.input):
            raise UsageError(f"--input={s.input}: the list file does not exist.")
        return
    if not FileSystems.match([s.input], limits=[1])[0].metadata_list:
        raise UsageError(f"--input={s.input} matches no file.")

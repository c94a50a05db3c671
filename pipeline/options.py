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
from pipeline import beam_flags, commit, decode, selection, sources

PROG = "pipeline.label"
SELECT_PROG = "pipeline.select"
REQUIRED = ("teacher", "input", "output")
SELECT_REQUIRED = ("predictions", "output")
# What decides a prediction (stage 1), with the teacher: the prediction index's identity. A
# rerun with the same values grows the index (new inputs only); any other value is another index.
# jit_compile is resolved before it is hashed ("auto" -> "xla" or "graph", resolve_compile_mode):
# XLA and the graph executor differ in the last float bits.
IDENTITY_FIELDS = ("input_format", "image_feature", "top_k", "temperature", "full_distribution", "max_pixels",
                   "max_bytes", "precision", "jit_compile")
# Stage 1's settings that change no prediction: recorded per run in index.json, not hashed. The
# input's spelling is here too: the URIs it yields are what decides which inputs are new.
# decode_memory_mb can reject an image too large for the budget ("too_much_memory"): such a
# rejection stays in the index until --overwrite, like any other.
RECORDED_FIELDS = ("input", "data_dir", "tfds_ranges", "decode_memory_mb", "images_per_prediction_shard",
                   "max_batch_size", "teacher_strategy", "tpu", "teacher_sharing", "read_threads", "decode_threads",
                   "stand_in_device_ms")
# What decides the selection (stage 2), made from an index without the teacher.
SELECTION_FIELDS = ("min_confidence", "per_class", "balance", "dedup", "max_side", "num_shards", "target_shard_mb",
                    "rejected_shards", "thumbnails_per_class")
# The rest change no output: where things go, permissions (the manifest's teacher.random_init
# says what matters), parallelism and what is printed.
SELECT_FLAGS = ("predictions", "output", "overwrite", "fetch_threads", *SELECTION_FIELDS)
# Stage 2's worker overrides, used when pipeline.label submits both stages to Dataflow.
SELECT_WORKER_FLAGS = ("select_machine_type", "select_container_image")
TEACHER_SHARING = ("auto", "machine", "process")


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
    per_class: int = None  # None: derived from the index (selection.derived_per_class); 0: no cap, no balance
    balance: str = "none"
    dedup: bool = False
    full_distribution: bool = False
    predictions: str = None  # default: OUT_DIR/predictions
    images_per_prediction_shard: int = 10_000
    decode_threads: int = 0  # 0: from the cores and processes of the worker (pipeline/workers.py)
    read_threads: int = 64
    fetch_threads: int = 0  # 0: 16 for an object store, the cores for local files (fetch.parallel_reads)
    target_shard_mb: int = 256
    max_side: int = 0
    max_pixels: int = 100_000_000
    max_bytes: int = sources.DEFAULT_MAX_BYTES
    decode_memory_mb: int = decode.DEFAULT_DECODE_MEMORY_MB
    num_shards: int = 0  # 0: from the data, --target_shard_mb each
    rejected_shards: int = 0  # 0: from the rejection lines expected (pipeline.select.rejected_shard_count)
    max_batch_size: int = 32
    precision: str = "float32"
    jit_compile: str = "auto"
    teacher_strategy: str = "auto"
    tpu: str = None
    teacher_sharing: str = "auto"
    stand_in_device_ms: float = 0.0
    select_machine_type: str = "n2-standard-16"
    select_container_image: str = None
    thumbnails_per_class: int = 4
    overwrite: bool = False
    allow_random_teacher: bool = False
    progress_every_s: float = 10.0

    def identity_settings(self):
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def recorded_settings(self):
        return {name: getattr(self, name) for name in RECORDED_FIELDS}

    def selection_settings(self):
        return {name: getattr(self, name) for name in SELECTION_FIELDS}

    def predictions_dir(self):
        return self.predictions or FileSystems.join(self.output, "predictions")


def digest(document):
    """Deterministic id of settings (no wall clock)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def define_flags():
    values = flags.FlagValues()
    defaults = LabelSettings(teacher="", input="", output="")
    f = dict(flag_values=values)
    flags.DEFINE_string("teacher", None, "Teacher directory (python -m teacher.export).", **f)
    flags.DEFINE_string("input", None, "Image glob, list file, TFRecord glob, or tfds:NAME/SPLIT.", **f)
    flags.DEFINE_string("output", None, "OUT_DIR for records, rejections, manifest and stats (local or gs://).", **f)
    flags.DEFINE_string("predictions", None, "PRED_DIR of the prediction index (stage 1's output; default "
                        "OUT_DIR/predictions). pipeline.select reads it.", **f)
    flags.DEFINE_integer("images_per_prediction_shard", defaults.images_per_prediction_shard,
                         "Image files per prediction shard: the unit of work, and what a killed run loses at "
                         "most per worker thread (a TFRecord file or TFDS range is a shard of its own).", **f)
    flags.DEFINE_integer("decode_threads", defaults.decode_threads, "Threads decoding ahead of the teacher per "
                         "worker process (0: the process's share of the cores with a GPU/TPU teacher, none with a "
                         "CPU teacher, whose own threads use the cores).", **f)
    flags.DEFINE_integer("read_threads", defaults.read_threads, "Reads in flight per worker process (I/O "
                         "threads, independent of the CPU count: enough to keep an accelerator fed from a bucket) "
                         "in stage 1, which reads ahead of decoding (stage 2: --fetch_threads per shard writer).",
                         **f)
    flags.DEFINE_integer("fetch_threads", defaults.fetch_threads, "Parallel reads per train shard writer, which "
                         "fetches the selected images' bytes (0: 16 for gs:// and other remote inputs, one per core "
                         "for local files).", **f)
    flags.DEFINE_integer("target_shard_mb", defaults.target_shard_mb, "train-* shard size the shard count aims "
                         "at (selected input bytes, copies included), unless --num_shards is set.", **f)
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
                         "Keep at most this many images per class, most confident first, and fill classes "
                         "with fewer to it (--balance). Default: the images the teacher labeled divided "
                         "evenly among its classes; 0: no cap and no balance (Noisy Student: 130000).", **f)
    flags.DEFINE_enum("balance", None, ["duplicate", "none"], "Fill classes below --per_class by duplicating "
                      "their images (default: duplicate unless --per_class=0).", **f)
    flags.DEFINE_bool("dedup", defaults.dedup, "Keep one input (the smallest URI) of identical "
                      "content; reject the others as duplicates.", **f)
    flags.DEFINE_bool("full_distribution", defaults.full_distribution, "Also store every class probability.", **f)
    flags.DEFINE_integer("max_side", defaults.max_side, "Downscale stored images to this side (0: keep).", **f)
    flags.DEFINE_integer("max_pixels", defaults.max_pixels, "Reject images with more pixels, before decoding.", **f)
    flags.DEFINE_integer("decode_memory_mb", defaults.decode_memory_mb, "Decode memory per worker process, "
                         "shared by its threads: a decode waits until its estimated peak fits; an image that "
                         "alone needs more is rejected (too_much_memory).", **f)
    flags.DEFINE_integer("max_bytes", defaults.max_bytes, "Reject input images of more bytes, before reading them "
                         "(files: from the listing's size, and no read goes further).", **f)
    flags.DEFINE_integer("num_shards", defaults.num_shards, "train-* shards (0: from the data, see "
                         "--target_shard_mb).", **f)
    flags.DEFINE_integer("rejected_shards", defaults.rejected_shards, "rejected-* shards (0: from the volume, "
                         "about 1,000,000 rejection lines each, counted from the prediction index).", **f)
    flags.DEFINE_integer("max_batch_size", defaults.max_batch_size, "Inference batch (the teacher's compiled "
                         "size).", **f)
    flags.DEFINE_enum("precision", defaults.precision, ["float32", "bfloat16", "float16"], "Teacher compute "
                      "precision: bfloat16 on TPUs and GPUs that have it (A100, L4, H100), float16 on GPUs that "
                      "do not (T4, V100).", **f)
    flags.DEFINE_enum("jit_compile", defaults.jit_compile, ["auto", "xla", "graph"],
                      "Teacher compile mode. auto: XLA on GPU/TPU; on a CPU the faster of XLA and TF's graph "
                      "executor, measured when each worker loads the teacher.", **f)
    flags.DEFINE_enum("teacher_strategy", defaults.teacher_strategy, ["auto", "cpu", "gpu", "tpu"],
                      "tf.distribute strategy of the teacher on each worker.", **f)
    flags.DEFINE_string("tpu", None, "TPU name for --teacher_strategy=tpu ('local' on a TPU VM worker).", **f)
    flags.DEFINE_enum("teacher_sharing", defaults.teacher_sharing, TEACHER_SHARING, "Teacher copies per worker "
                      "VM. machine: one, in a process every SDK process of the VM calls (Beam's "
                      "MultiProcessShared); process: one per SDK process. auto: machine with --teacher_strategy="
                      "gpu|tpu or a GPU/TPU on the worker, else process.", **f)
    flags.DEFINE_float("stand_in_device_ms", defaults.stand_in_device_ms, "Capacity planning and tests: the "
                       "teacher also holds a simulated device this many ms per batch, one batch at a time, so a "
                       "run measures whether this host would keep a chip of that speed fed (labels unchanged).",
                       **f)
    flags.DEFINE_string("select_machine_type", defaults.select_machine_type, "Dataflow: worker machine type of "
                        "stage 2 (selection needs no accelerator) when stage 1 runs on accelerator workers.", **f)
    flags.DEFINE_string("select_container_image", None, "Dataflow: SDK container image of stage 2 (default: "
                        "stage 1's --sdk_container_image; the GPU/TPU images also run on CPU workers).", **f)
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
    ("Prediction index", ["predictions", "images_per_prediction_shard"]),
    ("Teacher", ["teacher", "allow_random_teacher", "top_k", "temperature", "full_distribution"]),
    ("Selection", ["min_confidence", "per_class", "balance", "dedup"]),
    ("Output", ["output", "overwrite", "num_shards", "target_shard_mb", "rejected_shards", "max_side",
                "thumbnails_per_class"]),
    ("Runtime", ["teacher_strategy", "tpu", "teacher_sharing", "precision", "jit_compile", "max_batch_size",
                 "read_threads", "decode_threads", "fetch_threads", "stand_in_device_ms", "progress_every_s",
                 cli.TF_LOGS]),
    ("Dataflow", list(SELECT_WORKER_FLAGS)),
)


def _flags_of(prog):
    values = define_flags()
    if prog == SELECT_PROG:
        for name in list(values):
            if name not in (*SELECT_FLAGS, cli.TF_LOGS):
                delattr(values, name)
    return values


def help_text(doc, prog=PROG):
    """--help: `doc` (the job's usage), then the job's own flags by group, then how to see Beam's."""
    values = _flags_of(prog)
    groups = [(title, [name for name in names if name in values]) for title, names in GROUPS]
    required = SELECT_REQUIRED if prog == SELECT_PROG else REQUIRED
    return cli.help_text(doc, values, [group for group in groups if group[1]], required, beam_flags.FOOTER)


def parse(argv, prog=PROG):
    """argv (without the program name) -> (settings given, Beam args). Raises UsageError.

    For pipeline.select the settings hold its own flags; the rest come from the index
    (`with_index`)."""
    values = _flags_of(prog)
    try:
        beam_args = values([prog, *argv], known_only=True)[1:]
    except flags.Error as error:
        raise UsageError(cli.flag_error_message(error, values)) from error
    unknown = beam_flags.unknown(beam_args)
    if unknown:
        candidates = cli.flag_names(values) + beam_flags.option_names() + [beam_flags.HELP_FLAG[2:]]
        raise UsageError(cli.unknown_flags_message(unknown, candidates))
    for name in (SELECT_REQUIRED if prog == SELECT_PROG else REQUIRED):
        if not values[name].value:
            raise UsageError(f"--{name} is required.")
    fields = {f.name for f in dataclasses.fields(LabelSettings)}
    chosen = {name: values[name].value for name in fields if name in values}
    if chosen["balance"] is None:
        chosen["balance"] = "none" if chosen["per_class"] == 0 else "duplicate"
    chosen.setdefault("teacher", "")
    chosen.setdefault("input", "")
    return LabelSettings(**chosen), beam_args


def resolve(settings, num_classes):
    """Fills defaults that depend on the teacher and the input."""
    if not settings.top_k:
        settings = dataclasses.replace(settings, top_k=min(5, num_classes))
    if settings.input_format == "auto":
        settings = dataclasses.replace(settings, input_format=sources.guess_format(settings.input))
    if not settings.image_feature:
        settings = dataclasses.replace(settings, image_feature=sources.default_image_feature(settings.input_format))
    return settings


def resolve_compile_mode(settings, accelerated):
    """--jit_compile=auto -> "xla" for a teacher on a GPU or TPU, "graph" on CPUs. A rule, not a
    measurement, so that the same command gives the same mode, and so the same index, on every
    run and every worker (measured on CPUs, README: the graph executor is as fast or faster on
    AMD EPYC Zen 3 and Zen 4 at float32 and bfloat16, and on Intel with AMX at bfloat16; XLA is
    ~13% faster on Intel with AMX at float32, where --jit_compile=xla is the better choice)."""
    if settings.jit_compile != "auto":
        return settings
    return dataclasses.replace(settings, jit_compile="xla" if accelerated else "graph")


def with_index(settings, index_document):
    """pipeline.select's settings: its own flags, the index's identity settings, and what its
    last run recorded about the input (where to fetch from, with which decode budget)."""
    last = index_document["runs"][-1]["settings"]
    recorded = {name: last[name] for name in ("input", "data_dir", "tfds_ranges", "decode_memory_mb") if name in last}
    return dataclasses.replace(settings, **index_document["settings"], **recorded)


def with_per_class(settings, index_document):
    """--per_class resolved against the index stage 2 selects from: a given value stays, the
    default becomes selection.derived_per_class of the index's labeled entries. A --dry_run
    builds stage 2 before stage 1 has counted them: that graph's cap is the rule applied to
    none (1); the job that runs is built after stage 1, from the committed counts."""
    if settings.per_class is not None:
        return settings
    counts = index_document.get("counts") or {"labeled": 0}
    return dataclasses.replace(settings, per_class=selection.derived_per_class(
        counts["labeled"], index_document["teacher"]["num_classes"]))


def validate(settings, num_classes):
    """Range and consistency checks, and that the input exists and the output may be written."""
    s = settings
    checks = [
        (1 <= s.top_k <= num_classes, f"--top_k={s.top_k} must be between 1 and the teacher's {num_classes} classes"),
        (s.temperature > 0, f"--temperature={s.temperature} must be > 0"),
        (s.max_pixels > 0, f"--max_pixels={s.max_pixels} must be > 0"),
        (s.decode_memory_mb > 0, f"--decode_memory_mb={s.decode_memory_mb} must be > 0"),
        # 2 GiB - 1: a protobuf message (the record that stores the image) cannot be larger.
        (0 < s.max_bytes < 1 << 31, f"--max_bytes={s.max_bytes} must be between 1 and {(1 << 31) - 1}"),
        (s.max_batch_size >= 1, f"--max_batch_size={s.max_batch_size} must be >= 1"),
        (s.images_per_prediction_shard >= 1, "--images_per_prediction_shard must be >= 1"),
        (s.decode_threads >= 0, "--decode_threads must be >= 0 (0: from the worker's cores and processes)"),
        (s.read_threads >= 1, f"--read_threads={s.read_threads} must be >= 1"),
        (s.stand_in_device_ms >= 0, f"--stand_in_device_ms={s.stand_in_device_ms} must be >= 0"),
        (s.tfds_ranges >= 1, "--tfds_ranges must be >= 1"),
        (not (s.tpu and s.teacher_strategy not in ("auto", "tpu")),
         f"--tpu={s.tpu} contradicts --teacher_strategy={s.teacher_strategy}"),
    ]
    _raise_first(checks)
    _check_input(s)
    validate_selection(s)


def validate_selection(settings):
    """Checks of the selection flags and of OUT_DIR (both CLIs)."""
    s = settings
    _raise_first([
        (0.0 <= s.min_confidence <= 1.0, f"--min_confidence={s.min_confidence} must be in [0, 1]"),
        (s.per_class is None or s.per_class >= 0, f"--per_class={s.per_class} must be >= 0"),
        (not (s.balance == "duplicate" and s.per_class == 0),
         "--balance=duplicate needs a --per_class above 0 (the count each class is filled to)"),
        (s.max_side >= 0, f"--max_side={s.max_side} must be >= 0"),
        (s.num_shards >= 0, "--num_shards must be >= 0 (0: from the data)"),
        (s.target_shard_mb >= 1, "--target_shard_mb must be >= 1"),
        (s.rejected_shards >= 0, "--rejected_shards must be >= 0 (0: from the volume)"),
        (s.fetch_threads >= 0, "--fetch_threads must be >= 0 (0: from where the inputs are)"),
        (s.thumbnails_per_class >= 0, "--thumbnails_per_class must be >= 0"),
        (s.progress_every_s >= 0, f"--progress_every_s={s.progress_every_s} must be >= 0 (0: no progress)"),
    ])
    claims = commit.pending_claims(s.output)
    if claims:  # checked here too, so a stale claim fails this run before, not after, its inference
        raise UsageError(f"--output={s.output} holds {claims[0]}: another labeling job is committing there, or one "
                         "was killed mid-commit. If no other job is running, delete that file and rerun with "
                         "--overwrite.")
    if commit.existing_outputs(s.output) and not s.overwrite:
        raise UsageError(f"--output={s.output} already holds a labeling run; pass --overwrite to replace it "
                         "(the new run replaces it only once it has finished).")


def _raise_first(checks):
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")


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

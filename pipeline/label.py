r"""The labeling job: unlabeled images -> filtered, class-balanced soft-label TFRecords.

Locally (DirectRunner):
  python -m pipeline.label --teacher=TEACHER_DIR --input='photos/*' --output=OUT_DIR \
      --min_confidence=0.3 --per_class=1000
On Dataflow: add Beam's options, e.g. --runner=DataflowRunner --project=P --region=R
  --temp_location=gs://B/tmp --setup_file=./setup.py (README: CPU, GPU and TPU workers).

Two stages, run one after the other (on Dataflow: two jobs):
  1. inference (pipeline.predict): ListInputs -> AssignBuckets -> GroupUnitsByBucket ->
     PredictShards -> CommitIndex, writing the prediction index to --predictions (default OUT_DIR/predictions):
     labels and URIs, no image bytes. A killed run, rerun, resumes from the shards it published.
  2. selection (pipeline.select): ReadIndex -> [Deduplicate] -> Select -> WriteRecords /
     WriteRejected -> Facts -> Commit. `python -m pipeline.select` reruns it alone with other
     selection flags, without the teacher.
"""

import os
import socket
import sys
import uuid
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from models import cli
from pipeline import (beam_flags, dataflow_stages, index, inference, options, predict, progress, select, sources,
                      workers)
from pipeline.options import UsageError
from teacher import metadata as teacher_metadata


def _teacher_metadata(path):
    try:
        return teacher_metadata.read(path)
    except teacher_metadata.TeacherError as error:
        raise UsageError(f"--teacher={path}: {error}") from error


def index_base(settings, meta):
    """What stage 1's index.json says besides its buckets, shards, runs and counts (known
    before it runs). `run_id` identifies the index: the teacher and the settings that decide a
    prediction (options.IDENTITY_FIELDS), never where the inputs are listed or how fast."""
    identity = settings.identity_settings()
    return {
        "schema_version": index.SCHEMA_VERSION,
        "run_id": options.digest({**identity, "teacher": meta.teacher_id}),
        "teacher": {"teacher_id": meta.teacher_id, "model_name": meta.model_name, "num_classes": meta.num_classes,
                    "eval_image_size": meta.eval_image_size, "random_init": meta.random_init,
                    "path": settings.teacher,  # not in run_id: the same teacher elsewhere is the same teacher
                    # The student checks these against its labeled data's class order (student/pseudo.py).
                    "class_names": list(meta.class_names)},
        "settings": identity,
        "input": settings.input,
    }


def _accelerated(settings, opts):
    """Whether stage 1's teacher runs on a GPU or TPU (what --jit_compile=auto resolves from)."""
    if settings.teacher_strategy in ("gpu", "tpu") or settings.tpu or dataflow_stages.accelerators(opts):
        return True
    return not dataflow_stages.is_dataflow(opts) and workers.accelerator_on_this_machine() is not None


def build_predict(pipeline, settings, document, previous=None, claim=None):
    """Adds stage 1 to `pipeline`; returns the PCollection holding the index document.
    `previous`: the index it grows (None: a new one); `claim`: the job's claim on PRED_DIR."""
    s = settings
    handler = inference.TeacherModelHandler(
        s.teacher, top_k=s.top_k, temperature=s.temperature, full_distribution=s.full_distribution,
        max_batch_size=s.max_batch_size, precision=s.precision, jit_compile=s.jit_compile,
        strategy=s.teacher_strategy, tpu=s.tpu, sharing=s.teacher_sharing,
        processes=workers.processes_per_machine(pipeline.options), job_id=uuid.uuid4().hex,
        stand_in_device_ms=s.stand_in_device_ms)
    source = sources.input_source(s.input, s.input_format, s.image_feature, s.data_dir, s.tfds_ranges, s.max_bytes)
    stage = predict.Predict(s.predictions_dir(), document["run_id"], document, source, handler, s.max_pixels,
                            s.decode_memory_mb, s.max_batch_size, s.images_per_prediction_shard, s.read_threads,
                            s.decode_threads, previous=previous,
                            run={"settings": s.recorded_settings()}, claim=claim)
    committed = pipeline | "Predict" >> stage
    if s.progress_every_s:  # images done / found, as Beam counters; printed while a local run works
        progress.track(s.progress_every_s, pipeline.runner, stage.listing.found, stage.progress, committed)
    return committed


class Results(NamedTuple):
    """The PipelineResults of the two stages (on a DataflowRunner --dry_run, each holds its built
    job: `.job.options` are the options that job was given)."""

    predict: object
    select: object


def teacher_compile_modes(results):
    """{mode: batches} from stage 1's Label/teacher_batches_* counters."""
    prefix = "teacher_batches_"
    return {counter.key.metric.name[len(prefix):]: counter.committed for counter in results.predict.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("Label"))["counters"] if counter.key.metric.name.startswith(prefix)}


def run(argv=None, test_pipeline=None, select_test_pipeline=None):
    """Parses flags, checks them, runs stage 1 then stage 2 and waits for them. Returns Results.

    Raises UsageError before any work for a wrong flag, a missing input, a non-teacher, a
    prediction directory holding another run's index without --overwrite, or a randomly
    initialised teacher without --allow_random_teacher.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, beam_args = options.parse(argv)
    try:
        beam_args = dataflow_stages.predict_args(beam_args)
    except ValueError as error:
        raise UsageError(str(error)) from error
    opts = select.pipeline_options(beam_args)
    FileSystems.set_options(opts)  # the checks below read gs:// with the job's credentials
    meta = _teacher_metadata(settings.teacher)
    settings = options.resolve(settings, meta.num_classes)
    settings = options.resolve_compile_mode(settings, _accelerated(settings, opts))
    options.validate(settings, meta.num_classes)
    _check_random_teacher(settings, meta)
    document = index_base(settings, meta)
    directory = settings.predictions_dir()
    previous = index.read_index(directory)
    other = previous and (previous.get("schema_version"), previous["run_id"]) != (index.SCHEMA_VERSION,
                                                                                 document["run_id"])
    if other:
        if not settings.overwrite:
            raise UsageError(f"{directory} holds the prediction index of another teacher or prediction settings "
                             f"({', '.join(options.IDENTITY_FIELDS)}), or one of an older format; pass --overwrite "
                             "to replace it, or --predictions=DIR for another place (python -m pipeline.select "
                             "re-selects from an index without the teacher).")
        previous = None  # replaced: the commit removes its files
    # Its own options object even when the args are equal: submitting stage 1 to Dataflow
    # writes its job name and staging paths into the options it was given.
    select_args = dataflow_stages.select_args(beam_args, settings.select_machine_type,
                                              settings.select_container_image)
    select_opts = select.pipeline_options(select_args)
    if select_args != beam_args:
        sys.stderr.write(f"{options.PROG}: stage 2 (selection) uses no accelerator, so its job runs on CPU "
                         f"workers: {dataflow_stages.describe_workers(select_opts)} (flags --select_machine_type, "
                         "--select_container_image).\n")
    dry_run = opts.view_as(TestOptions).dry_run
    claim = None if dry_run else _claim(directory, opts)
    try:
        # Stage 1 always runs: it lists the inputs again and predicts only the units the index
        # does not hold yet (none, over an unchanged list: then it reads no image and no shard).
        predicted = select.run_pipeline(
            opts, lambda pipeline: build_predict(pipeline, settings, document, previous, claim), test_pipeline)
    finally:
        if claim:  # the commit released it; a failed job leaves nothing to protect
            index.release_claim(directory, claim)
    # Stage 2 reads the index when it runs: a --dry_run builds it all the same.
    committed = index.read_index(directory)
    if committed is None and not dry_run:
        raise RuntimeError(f"stage 1 ended without an index in {directory}: its job has not finished (a runner that "
                           "does not block?); run python -m pipeline.select once it has.")
    selected = select.run_pipeline(
        select_opts, lambda pipeline: select.build(pipeline, settings, committed or document), select_test_pipeline)
    return Results(predicted, selected)


def _claim(directory, opts):
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "local": not dataflow_stages.is_dataflow(opts)}
    try:
        return index.claim(directory, uuid.uuid4().hex, owner)
    except index.ClaimError as error:
        raise UsageError(str(error)) from error


def _check_random_teacher(settings, meta):
    # A teacher exported with --model and no --weights labels at random: refused, since the
    # mistake would otherwise surface only after a student trained on noise.
    if not meta.random_init:
        return
    if not settings.allow_random_teacher:
        raise UsageError(f"--teacher={settings.teacher} is a randomly initialised {meta.model_name} (teacher.json "
                         "random_init: true): its labels would be noise. Export a trained teacher (python -m "
                         "teacher.export --model_dir=RUN, or --model=NAME --weights=FILE), or pass "
                         "--allow_random_teacher for a smoke test.")
    sys.stderr.write(f"{options.PROG}: warning: --teacher={settings.teacher} is randomly initialised "
                     "(--allow_random_teacher): its labels are noise.\n")


def main():
    argv = sys.argv[1:]
    if cli.wants_help(argv):
        sys.stdout.write(options.help_text(__doc__))
        return
    if beam_flags.HELP_FLAG in argv:
        beam_flags.print_help(options.PROG)
        return
    settings, beam_args = cli.run_main(options.PROG, lambda: options.parse(argv))
    results = cli.run_main(options.PROG, lambda: run(argv))
    if dataflow_stages.built_not_submitted(select.pipeline_options(beam_args)):  # no metrics, no output yet
        for title, result in (("stage 1, inference", results.predict), ("stage 2, selection", results.select)):
            print("\n".join(dataflow_stages.dry_run_lines(title, result)))
        return
    select.print_summary(settings.output)
    if results.select is not None:
        print(f"teacher compile mode (batches per mode): {teacher_compile_modes(results) or 'not reported'}")


if __name__ == "__main__":
    main()

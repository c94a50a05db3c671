r"""The labeling job: unlabeled images -> filtered, class-balanced soft-label TFRecords.

Locally (DirectRunner):
  python -m pipeline.label --teacher=TEACHER_DIR --input='photos/*' --output=OUT_DIR \
      --min_confidence=0.3 --per_class=1000
On Dataflow: add Beam's options, e.g. --runner=DataflowRunner --project=P --region=R
  --temp_location=gs://B/tmp --setup_file=./setup.py (README: CPU, GPU and TPU workers).

Stages, as named in the Dataflow UI: ReadImages -> [Deduplicate] -> Decode -> Label
(RunInference) -> Select -> WriteRecords / WriteRejected -> Facts -> Commit.
"""

import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, TestOptions

from models import cli
from pipeline import (beam_flags, commit, decode, inference, options, progress, records, selection, sources, stats,
                      write)
from pipeline.options import UsageError
from teacher import metadata as teacher_metadata


def _teacher_metadata(path):
    try:
        return teacher_metadata.read(path)
    except teacher_metadata.TeacherError as error:
        raise UsageError(f"--teacher={path}: {error}") from error


def build(pipeline, settings, meta):
    """Adds the whole job to `pipeline`; returns the PCollection holding the manifest."""
    s = settings
    # One nonce per job, drawn here so every worker agrees: jobs with identical settings
    # (one run_id) still never share staging, and the commit can tell its own files apart.
    run_nonce = commit.new_run_nonce()
    staging = commit.staging_dir(s.output, s.run_id(), run_nonce)
    previous = commit.manifest_fingerprint(s.output)  # the run --overwrite may replace, rechecked at commit
    read = sources.ReadImages(s.input, s.input_format, s.image_feature, s.data_dir, s.tfds_ranges, s.max_bytes)
    candidates, read_rejections = pipeline | "ReadImages" >> read
    rejection_sets = [read_rejections]
    read_total = ((candidates | "CandidatesSeen" >> beam.Map(lambda c: c.uri),
                   read_rejections | "ReadRejectionsSeen" >> beam.Map(lambda r: r.uri))
                  | "EverythingRead" >> beam.Flatten())
    if s.dedup:
        unique = candidates | "Deduplicate" >> selection.Deduplicate()
        candidates = unique.unique
        rejection_sets.append(unique[selection.REJECTED])
    decoded = candidates | "Decode" >> beam.ParDo(
        decode.DecodeImages(s.max_pixels, s.max_side, s.decode_memory_mb)).with_outputs(decode.REJECTED, main="images")
    rejection_sets.append(decoded[decode.REJECTED])
    handler = inference.TeacherModelHandler(
        s.teacher, top_k=s.top_k, temperature=s.temperature, full_distribution=s.full_distribution,
        min_batch_size=s.min_batch_size, max_batch_size=s.max_batch_size, precision=s.precision,
        jit_compile=s.jit_compile, strategy=s.teacher_strategy, tpu=s.tpu,
        share_across_processes=s.share_model_across_processes)
    label_outputs = decoded.images | "Label" >> inference.Label(handler)
    labeled = label_outputs.labeled
    rejection_sets.append(label_outputs[inference.REJECTED])  # NaN/Inf predictions
    # Thumbnails only feed the report's examples (Facts, from `labeled`); selection's join and
    # the shard writer never need them.
    without_thumbnails = labeled | "DropThumbnails" >> beam.Map(
        lambda image: image._replace(image=image.image._replace(thumbnail=b"")))
    selected = without_thumbnails | "Select" >> selection.Select(s.min_confidence, s.per_class, s.balance)
    rejected = tuple(rejection_sets) | "AllRejections" >> beam.Flatten()
    train_files = selected["written"] | "WriteRecords" >> write.WriteShards(
        staging, records.TRAIN_PREFIX, s.num_shards, records.TRAIN_SUFFIX, True,
        write.record_identity, write.serialize_record)
    rejected_files = rejected | "WriteRejected" >> write.WriteShards(
        staging, records.REJECTED_PREFIX, s.rejected_shards, records.REJECTED_SUFFIX, False,
        write.rejection_identity, write.serialize_rejection)
    facts = {"read": read_total, "rejected": rejected, "labeled": labeled, "below": selected["below"],
             "over_cap": selected["over_cap"], "written": selected["written"],
             "train_files": train_files, "rejected_files": rejected_files} | "Facts" >> stats.Facts(
        meta.num_classes, s.thumbnails_per_class)
    manifest_base = {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": s.run_id(),
        "teacher": {"teacher_id": meta.teacher_id, "model_name": meta.model_name, "num_classes": meta.num_classes,
                    "eval_image_size": meta.eval_image_size, "random_init": meta.random_init, "path": s.teacher,
                    # The student checks these against its labeled data's class order (student/pseudo.py).
                    "class_names": list(meta.class_names)},
        "settings": s.to_manifest(),
        "input": s.input,
    }
    manifest = facts | "Commit" >> beam.ParDo(commit.Commit(s.output, staging, manifest_base, meta.class_names,
                                                            run_nonce, previous, s.overwrite))
    if s.progress_every_s:  # images done / found, as Beam counters; printed while a local run works
        progress.track(s.progress_every_s, pipeline.runner, read.found, labeled, rejected, manifest)
    return manifest


def run(argv=None, test_pipeline=None):
    """Parses flags, checks them, runs the job and waits for it. Returns the PipelineResult.

    Raises UsageError before any work for a wrong flag, a missing input, a non-teacher, or a
    randomly initialised teacher without --allow_random_teacher.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, beam_args = options.parse(argv)
    pipeline_options = PipelineOptions(beam_args)
    standard = pipeline_options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        # Beam's DirectRunner first tries to download the Prism runner binary from GitHub and
        # falls back to the in-process FnApiRunner when it cannot. This job never downloads at
        # run time, so local runs go straight to FnApiRunner (which honours
        # --direct_num_workers and --direct_running_mode=multi_processing).
        standard.runner = "FnApiRunner"
    FileSystems.set_options(pipeline_options)  # the checks below read gs:// with the job's credentials
    meta = _teacher_metadata(settings.teacher)
    settings = options.resolve(settings, meta.num_classes)
    options.validate(settings, meta.num_classes)
    _check_random_teacher(settings, meta)
    # Everything the workers run lives in installed packages (--setup_file ships them), so
    # the main session need not be pickled.
    pipeline_options.view_as(SetupOptions).save_main_session = False
    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options)
    build(pipeline, settings, meta)
    result = pipeline.run()
    if not pipeline_options.view_as(TestOptions).dry_run:  # DataflowRunner builds, does not submit
        result.wait_until_finish()
    return result


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
    settings, _ = cli.run_main(options.PROG, lambda: options.parse(argv))
    result = cli.run_main(options.PROG, lambda: run(argv))
    manifest = commit.read_manifest(settings.output)
    if manifest:  # absent after a --dry_run, or while a non-blocking runner's job is still running
        counts = ", ".join(f"{name} {value}" for name, value in manifest["counts"].items())
        print(f"labeling run {manifest['run_id']} by teacher {manifest['teacher']['teacher_id']}: {counts}\n"
              f"-> {settings.output} (manifest.json, stats.json, {len(manifest['files']['train'])} train shards)")
        print(f"teacher compile mode (batches per mode): {teacher_compile_modes(result) or 'not reported'}")


def teacher_compile_modes(result):
    """{mode: batches} from the Label/teacher_batches_* counters of a finished job."""
    prefix = "teacher_batches_"
    return {counter.key.metric.name[len(prefix):]: counter.committed for counter in result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("Label"))["counters"] if counter.key.metric.name.startswith(prefix)}


if __name__ == "__main__":
    main()

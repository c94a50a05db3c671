r"""Stage 2, selection: a prediction index -> filtered, class-balanced soft-label TFRecords.

Re-selects from an existing index without running the teacher again:
  python -m pipeline.select --predictions=OUT_DIR/predictions --output=OUT_DIR2 \
      --min_confidence=0.5 --per_class=1000
`python -m pipeline.label` runs stage 1 and then this, with the same code, so label-then-select
with the same flags writes the same bytes as one labeling command.

Stages, as named in the Dataflow UI: ReadIndex -> [Deduplicate] -> Select -> WriteRecords
(fetches each kept image's bytes once and writes its copies) / WriteRejected -> Facts -> Commit;
CountTrainShards sizes the train shards from what Select keeps.
"""

import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, TestOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner

from models import cli
from pipeline import (beam_flags, buckets, commit, dataflow_stages, index, options, records, selection, sources, stats,
                      write)
from pipeline.elements import Rejection
from pipeline.options import UsageError

REJECTED = "rejected"


def _index_shards(directory, run_id):
    """The shard records of the committed index.json (pipeline/buckets.py), as the job runs."""
    document = index.read_index(directory)
    if document is None or document["run_id"] != run_id:
        found = "no index.json" if document is None else f"the index of run {document['run_id']}"
        raise RuntimeError(f"{directory} holds {found}, not the prediction run {run_id} this selection was built "
                           "for (replaced meanwhile?). Nothing was published.")
    return document["shards"]


class _SplitRejections(beam.DoFn):
    def process(self, entry):
        yield beam.pvalue.TaggedOutput(REJECTED, entry) if isinstance(entry, Rejection) else entry


def _read_index(pbegin, settings, index_run_id):
    """The index's live entries (Prediction or Rejection: those of inputs its last run listed),
    its shards spread over the workers."""
    directory = settings.predictions_dir()
    return (pbegin
            | "IndexDir" >> beam.Create([directory])
            | "IndexShards" >> beam.FlatMap(_index_shards, index_run_id)
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadIndex" >> beam.FlatMap(buckets.live_entries, directory))


def _labeled(entries, settings):
    """Index entries -> (the predictions selection chooses from, [rejection PCollections]):
    the index's rejections, and under --dedup the copies of identical content."""
    split = entries | "SplitRejections" >> beam.ParDo(_SplitRejections()).with_outputs(REJECTED, main="labeled")
    labeled, rejection_sets = split.labeled, [split[REJECTED]]
    if settings.dedup:
        unique = labeled | "Deduplicate" >> selection.Deduplicate()
        labeled = unique["unique"]
        rejection_sets.append(unique[selection.REJECTED])
    return labeled, rejection_sets


class _CountTrainShards(beam.PTransform):
    """The predictions selection chooses from -> the train shard count (one int): --num_shards,
    or the selected inputs' bytes (copies included) over --target_shard_mb.

    It sums what selection keeps in a branch of its own (selection.SelectedBytes: a combiner per
    class, so it holds nothing per image), rather than summing the records on their way to the
    writers: the writers' keying needs the count, so on the local runner (FnApiRunner) a count
    taken from those records would hold every one of them until the sum is known (measured:
    40 MB more at 40k tiny images). Which entries it sums:
    - with --dedup, the deduplicated `labeled` collection that Select reads, so dedup runs once
      per job (tests/test_label_copies.py checks its counter); Select's shuffles stand between
      `labeled` and the writers, so nothing waits for the count (measured, stage 2 alone on
      FnApiRunner, 20k tiny images, --dedup --per_class=30000: peak RSS 950 MB, against 1018 MB
      reading the index again for a second dedup; the same output bytes);
    - without it, the index read again: without --per_class no shuffle stands between
      `labeled` and the writers' keying, so a count from `labeled` would make the local runner
      hold every record until the sum is known (measured, both stages, 20k -> 200k tiny images:
      peak RSS +20% that way). A second read costs the index's bytes, a few hundred per image."""

    def __init__(self, settings, index_run_id):
        super().__init__()
        self._settings, self._index_run_id = settings, index_run_id

    def expand(self, labeled):
        s = self._settings
        if s.num_shards:
            return labeled.pipeline | "Fixed" >> beam.Create([s.num_shards])
        if not s.dedup:
            labeled, _ = _labeled(_read_index(labeled.pipeline, s, self._index_run_id), s)
        return (labeled
                | "SelectedBytes" >> selection.SelectedBytes(s.min_confidence, s.per_class, s.balance)
                | "ShardCount" >> beam.Map(write.train_shard_count, s.target_shard_mb))


def rejected_shard_count(settings, counts):
    """--rejected_shards, or (0) from the rejection lines expected, known before stage 2 runs:
    the index's rejections, and under --dedup every labeled entry, since any of them may be a
    duplicate. `counts`: index.json's counts, or None when unknown (a --dry_run builds stage 2
    before stage 1 has written them): one shard."""
    if settings.rejected_shards:
        return settings.rejected_shards
    if counts is None:
        return 1
    return write.rejection_shard_count(counts["rejected"] + (counts["labeled"] if settings.dedup else 0))


def manifest_base(settings, index_document, run_id):
    """What the labeling output's manifest says besides its counts and files."""
    chosen = {k: v for k, v in index_document["settings"].items() if k not in ("teacher", "input")}
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": run_id,
        "teacher": index_document["teacher"],
        "predictions": {"path": settings.predictions_dir(), "run_id": index_document["run_id"]},
        "settings": {**chosen, **settings.selection_settings()},
        "input": index_document["input"],
    }


def build(pipeline, settings, index_document):
    """Adds stage 2 to `pipeline`: the index of `index_document` (its run_id; read when the job
    runs, so stage 1 may still be ahead) -> OUT_DIR. Returns the manifest's PCollection."""
    s = options.with_per_class(settings, index_document)
    run_id = options.digest({"predictions": index_document["run_id"], **s.selection_settings()})
    run_nonce = commit.new_run_nonce()
    staging = commit.staging_dir(s.output, run_id, run_nonce)
    previous = commit.manifest_fingerprint(s.output)  # the run --overwrite may replace, rechecked at commit
    source = sources.input_source(s.input, s.input_format, s.image_feature, s.data_dir, s.tfds_ranges, s.max_bytes)
    class_names = index_document["teacher"]["class_names"]
    entries = _read_index(pipeline, s, index_document["run_id"])
    labeled, rejection_sets = _labeled(entries, s)
    selected = labeled | "Select" >> selection.Select(s.min_confidence, s.per_class, s.balance)
    shard_count = labeled | "CountTrainShards" >> _CountTrainShards(s, index_document["run_id"])
    train = selected["written"] | "WriteRecords" >> write.WriteTrainShards(
        staging, source, s.max_pixels, s.max_side, s.decode_memory_mb, s.fetch_threads, shard_count)
    rejected = tuple(rejection_sets) | "AllRejections" >> beam.Flatten()
    unavailable = train[write.UNAVAILABLE]
    listed = ((rejected, unavailable | "UnavailableLines" >> beam.Map(write.unavailable_rejection))
              | "RejectionsAndUnavailable" >> beam.Flatten())
    rejected_shards = rejected_shard_count(s, index_document.get("counts"))
    rejected_files = listed | "WriteRejected" >> write.WriteRejections(staging, rejected_shards)
    facts = {"read": entries, "rejected": rejected, "labeled": labeled, "below": selected["below"],
             "over_cap": selected["over_cap"], "written": selected["written"], "unavailable": unavailable,
             "train_files": train["files"], "rejected_files": rejected_files} | "Facts" >> stats.Facts(
        len(class_names), s.thumbnails_per_class, source, s.max_pixels, s.fetch_threads)
    return facts | "Commit" >> beam.ParDo(commit.Commit(
        s.output, staging, manifest_base(s, index_document, run_id), class_names, run_nonce, previous, s.overwrite))


def pipeline_options(beam_args):
    """PipelineOptions of `beam_args`, with the local runner made FnApiRunner (see below)."""
    pipeline_options = PipelineOptions(beam_args)
    standard = pipeline_options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        # Beam's DirectRunner first tries to download the Prism runner binary from GitHub and
        # falls back to the in-process FnApiRunner when it cannot. This job never downloads at
        # run time, so local runs go straight to FnApiRunner (which honours
        # --direct_num_workers and --direct_running_mode=multi_processing). run_pipeline makes it.
        standard.runner = "FnApiRunner"
    # Everything the workers run lives in installed packages (--setup_file ships them), so
    # the main session need not be pickled.
    pipeline_options.view_as(SetupOptions).save_main_session = False
    return pipeline_options


def run_pipeline(pipeline_options, add, test_pipeline=None):
    """Builds (`add(pipeline)`), runs and waits for one job. Returns the PipelineResult."""
    pipeline = test_pipeline
    if pipeline is None:
        runner = None
        if pipeline_options.view_as(StandardOptions).runner == "FnApiRunner":
            # State-backed iterables: a group (a train shard's records) reaches the writer in
            # pages read through the state API, not as one element copied whole through each of
            # the runner's buffers. Measured on 100k tiny images: stage 2's peak RSS grew 81 MB
            # over 10k images with them, 125 MB without.
            runner = fn_runner.FnApiRunner(use_state_iterables=True)
        pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
    add(pipeline)
    result = pipeline.run()
    if not pipeline_options.view_as(TestOptions).dry_run:  # DataflowRunner builds, does not submit
        result.wait_until_finish()
    return result


def run(argv=None, test_pipeline=None):
    """Parses flags, checks them, runs the selection job and waits for it. Returns the PipelineResult."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given, beam_args = options.parse(argv, prog=options.SELECT_PROG)
    opts = pipeline_options(beam_args)
    FileSystems.set_options(opts)
    document = index.read_index(given.predictions)
    if document is None:
        raise UsageError(f"--predictions={given.predictions} holds no prediction index (index.json): run "
                         "python -m pipeline.label first (its predictions are in OUT_DIR/predictions).")
    settings = options.with_index(given, document)
    options.validate_selection(settings)
    return run_pipeline(opts, lambda pipeline: build(pipeline, settings, document), test_pipeline)


def print_summary(output):
    manifest = commit.read_manifest(output)
    if manifest:  # absent after a --dry_run, or while a non-blocking runner's job is still running
        counts = ", ".join(f"{name} {value}" for name, value in manifest["counts"].items())
        print(f"labeling run {manifest['run_id']} by teacher {manifest['teacher']['teacher_id']}: {counts}\n"
              f"-> {output} (manifest.json, stats.json, {len(manifest['files']['train'])} train shards)")


def main():
    argv = sys.argv[1:]
    if cli.wants_help(argv):
        sys.stdout.write(options.help_text(__doc__, prog=options.SELECT_PROG))
        return
    if beam_flags.HELP_FLAG in argv:
        beam_flags.print_help(options.SELECT_PROG)
        return
    given, beam_args = cli.run_main(options.SELECT_PROG, lambda: options.parse(argv, prog=options.SELECT_PROG))
    result = cli.run_main(options.SELECT_PROG, lambda: run(argv))
    if dataflow_stages.built_not_submitted(pipeline_options(beam_args)):
        print("\n".join(dataflow_stages.dry_run_lines("selection", result)))
        return
    print_summary(given.output)


if __name__ == "__main__":
    main()

r"""Label confidence report: read a labeling run before spending TPU time on a student.

  python -m pipeline.report --labels=OUT_DIR --output=report.html [--holdout=SOURCE]
  python -m pipeline.report --labels=OUT_DIR --format=text      # terminal table only
  python -m pipeline.report --labels=OUT_DIR --format=json      # machine-readable summary
  python -m pipeline.report --labels=OUT_DIR --recompute --output=report.html [Beam flags]

Reads OUT_DIR/manifest.json and OUT_DIR/stats.json (local or gs://), never the records. The
HTML file is self-contained: summary and accounting, confidence and entropy histograms, a
threshold sweep, per-class table and chart (worst classes first) and example thumbnails.
--holdout (an image folder with one subfolder per class, or tfds:NAME/SPLIT) runs the teacher
on labeled data and adds accuracy, a reliability diagram, ECE and accuracy versus kept
fraction: the evidence for choosing --min_confidence. --recompute writes a missing stats.json
with a Beam job over the records (DirectRunner unless Beam flags say otherwise).
"""

import json
import sys

from absl import flags
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models import cli
from pipeline import beam_flags
from pipeline.report import html
from pipeline.report.summary import (MANIFEST_FILE, STATS_FILE, ReportError, format_text, join, printable, read_run,
                                     summarize)

PROG = "pipeline.report"
FORMATS = ("html", "text", "json")


class ReportUsageError(ReportError, cli.UsageError):
    """A flag or flag combination of the report is wrong (exit 2; other ReportErrors exit 1)."""


def define_flags():
    """The report's flags, on a private FlagValues: importing this module defines no global flags
    (teacher.export's --output and --num_classes would clash), and tests can run it many times."""
    values = flags.FlagValues()
    f = dict(flag_values=values)
    flags.DEFINE_string("labels", None, "The labeling job's OUT_DIR (local path or gs://).", **f)
    flags.DEFINE_string("output", None, "Where to write the HTML report (local path or gs://).", **f)
    flags.DEFINE_enum("format", "html", FORMATS, "html: write --output and print the summary table; text: print "
                      "the table; json: print the summary as JSON (both also write --output if given).", **f)
    flags.DEFINE_string("holdout", None, "Labeled images the teacher did not train on: a folder with one "
                        "subfolder per class (named as the teacher's classes), or tfds:NAME/SPLIT.", **f)
    flags.DEFINE_integer("holdout_limit", None, "Evaluate at most this many holdout images.", **f)
    flags.DEFINE_string("teacher", None, "Teacher directory; overrides the path recorded in manifest.json.", **f)
    flags.DEFINE_bool("recompute", False, "Compute stats.json from the train-*.tfrecord records with a Beam job "
                      "(for runs without one). Beam pipeline flags pass through to it and to gs:// access.", **f)
    flags.DEFINE_integer("num_classes", None, "Classes, for --recompute when neither a manifest nor --teacher "
                         "says.", **f)
    flags.DEFINE_integer("chart_classes", 40, "Classes shown in the per-class chart (the table has all).", **f)
    flags.DEFINE_integer("thumbnail_classes", 24, "Classes whose example thumbnails the report shows.", **f)
    flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP + " (TensorFlow loads only for --holdout.)", **f)
    return values


# --help's sections; a flag missing here is listed under "Other flags" (models/cli.py).
GROUPS = (
    ("Input", ["labels", "teacher", "holdout", "holdout_limit"]),
    ("Output", ["output", "format", "chart_classes", "thumbnail_classes"]),
    ("Recompute", ["recompute", "num_classes"]),
    ("Runtime", [cli.TF_LOGS]),
)


def build_report(labels, output=None, output_format="html", holdout=None, holdout_limit=None, teacher_path=None,
                 recompute=False, num_classes=None, beam_args=(), chart_classes=40, thumbnail_classes=24):
    """Writes the HTML report (when `output` is set) and returns (summary dict, text to print)."""
    if output_format not in FORMATS:
        raise ReportUsageError(f"--format={output_format}: expected one of {', '.join(FORMATS)}.")
    if output_format == "html" and not output:
        raise ReportUsageError("--format=html needs --output=report.html (or use --format=text or json).")
    # Beam flags configure its filesystems too (gs:// project, impersonation, GCS client
    # options), so the manifest and stats reads below honour them, not only --recompute's job.
    FileSystems.set_options(PipelineOptions(list(beam_args)))
    manifest, stats = read_run(labels)
    if recompute and stats is not None:
        # The job's stats know what the records cannot (rejected, below threshold, over cap).
        raise ReportUsageError(f"--recompute: {join(labels, STATS_FILE)} exists, and the job's own stats know "
                               "more than the records do; delete it first to replace it.")
    if recompute:
        from pipeline.report.recompute import recompute as recompute_stats  # deferred: Beam's job graph is built only when asked

        stats = recompute_stats(labels, beam_args, teacher_path, num_classes)
    if stats is None:
        marker = "" if manifest else f" nor {MANIFEST_FILE} (is it a labeling job's OUT_DIR?)"
        raise ReportError(f"--labels={labels} has no {STATS_FILE}{marker}; pass --recompute to "
                          "compute it from the train-*.tfrecord records with a Beam job.")
    holdout_metrics = None
    if holdout:
        from pipeline.report.holdout import evaluate  # deferred: TensorFlow loads only for a holdout

        settings = (manifest or {}).get("settings") or {}
        path = teacher_path or ((manifest or {}).get("teacher") or {}).get("path")
        if not path:
            raise ReportUsageError("--holdout needs a teacher: manifest.json names none, so pass "
                                   "--teacher=TEACHER_DIR.")
        holdout_metrics = evaluate(path, holdout, float(settings.get("temperature") or 1.0),
                                   int(settings.get("top_k") or 5), settings.get("min_confidence"), holdout_limit)
    summary = summarize(labels, manifest, stats, holdout_metrics)
    if output:
        page = html.render(summary, stats.get("examples") or {}, chart_classes, thumbnail_classes)
        with FileSystems.create(output) as handle:
            handle.write(page.encode("utf-8"))
    if output_format == "json":
        text = json.dumps(summary, indent=1, allow_nan=False) + "\n"
    else:
        text = format_text(summary)
        if output:
            text += f"\nreport written to {printable(output)}\n"
    return summary, text


def unknown_flags(beam_args):
    """The flags in `beam_args` (as typed) that no Beam PipelineOptions class defines (typos, mostly)."""
    return beam_flags.unknown(beam_args)


def run(argv):
    """`argv` without the program name -> prints the summary (text or JSON); returns the summary dict.

    Raises ReportUsageError for a wrong flag, ReportError when the run's files are not usable.
    """
    values = define_flags()
    if cli.wants_help(argv):
        sys.stdout.write(cli.help_text(__doc__, values, GROUPS, ("labels",), beam_flags.FOOTER))
        return None
    if beam_flags.HELP_FLAG in argv:
        beam_flags.print_help(PROG)
        return None
    try:
        beam_args = values([PROG, *argv], known_only=True)[1:]
    except flags.Error as error:
        raise ReportUsageError(cli.flag_error_message(error, values)) from error
    unknown = unknown_flags(beam_args)
    if unknown:
        candidates = cli.flag_names(values) + beam_flags.option_names() + [beam_flags.HELP_FLAG[2:]]
        raise ReportUsageError(cli.unknown_flags_message(unknown, candidates))
    if not values.labels:
        raise ReportUsageError("--labels=OUT_DIR is required.")
    summary, text = build_report(values.labels, values.output, values.format, values.holdout, values.holdout_limit,
                                 values.teacher, values.recompute, values.num_classes, beam_args,
                                 values.chart_classes, values.thumbnail_classes)
    sys.stdout.write(text)
    return summary


def main():
    cli.run_main(PROG, lambda: run(sys.argv[1:]), failures=(ReportError,))


if __name__ == "__main__":
    main()

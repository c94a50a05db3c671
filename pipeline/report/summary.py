"""What a confidence report says, as plain data: read a labeling run and summarise it.

Reads only `manifest.json` and `stats.json` (see the labeling-job output contract), through
Beam's FileSystems so `gs://` works as well as local paths; never the records themselves.
`summarize` returns one JSON-ready dict that the HTML, text and JSON outputs all render.
"""

import json
import textwrap
import unicodedata

import numpy as np
from apache_beam.io.filesystems import FileSystems

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
COUNT_NAMES = ("read", "rejected", "labeled", "below_threshold", "over_cap", "kept", "unavailable", "duplicates",
               "written")
SWEEP_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(20)) + (0.99,)
QUANTILE_LEVELS = tuple(step / 10 for step in range(11))
RANDOM_TEACHER_WARNING = ("labels come from a randomly initialised teacher: they are noise "
                          "(teacher.json random_init: true; fine for a smoke test, never for training a student).")


class ReportError(ValueError):
    """A labeling run's files are missing or not what the contract says."""


def join(directory, name):
    return FileSystems.join(directory, name) if directory else name


def read_json(path, required=True):
    """The parsed JSON file at `path`, or None when it is absent and not `required`."""
    if not FileSystems.exists(path):
        if required:
            raise ReportError(f"{path} does not exist.")
        return None
    with FileSystems.open(path) as handle:
        text = handle.read().decode("utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ReportError(f"{path} should hold a JSON object; found {type(value).__name__}.")
    version = value.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ReportError(f"{path} has schema_version {version!r}; this report reads up to {SCHEMA_VERSION}.")
    return value


def read_run(labels):
    """(manifest or None, stats or None) of the labeling output directory `labels`."""
    manifest = read_json(join(labels, MANIFEST_FILE), required=False)
    stats = read_json(join(labels, STATS_FILE), required=False)
    if stats is not None:
        _check_stats(stats, join(labels, STATS_FILE))
    return manifest, stats


def _check_stats(stats, where):
    for key in ("num_classes", "confidence_histogram", "entropy_histogram", "per_class"):
        if key not in stats:
            raise ReportError(f"{where} lacks {key!r}; was it written by pipeline.label or --recompute?")
    for key in ("confidence_histogram", "entropy_histogram"):
        histogram = stats[key]
        if len(histogram.get("edges", [])) != len(histogram.get("counts", [])) + 1:
            raise ReportError(f"{where}: {key} needs one more edge than counts; found "
                              f"{len(histogram.get('edges', []))} edges, {len(histogram.get('counts', []))} counts.")
    if len(stats["per_class"]) != stats["num_classes"]:
        raise ReportError(f"{where}: num_classes is {stats['num_classes']} but per_class has "
                          f"{len(stats['per_class'])} rows.")


def printable(text):
    """`text` with control characters shown as escapes, so a class name cannot drive a terminal."""
    text = str(text)
    return "".join(char if unicodedata.category(char)[0] != "C" else repr(char)[1:-1] for char in text)


def above_threshold_counts(histogram, thresholds):
    """Images with confidence >= t, per t, from a 0.01-wide histogram (exact at bin edges)."""
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    counts = np.asarray(histogram["counts"], dtype=np.int64)
    # A threshold between two edges counts from the next edge up, so it never overstates.
    first_bins = np.searchsorted(edges[:-1], np.asarray(thresholds) - 1e-9, side="left")
    tail_sums = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])
    return [int(tail_sums[first]) for first in first_bins]


def estimated_kept(per_class, threshold, cap):
    """Kept images at `threshold` under a per-class `cap`, estimated from per-class quantiles.

    The job stores 11 confidence quantiles per class rather than a histogram per class (1000
    histograms would dwarf the rest of stats.json), so the fraction of a class above the
    threshold is interpolated between its deciles.
    """
    total = 0.0
    for row in per_class:
        quantiles = row.get("confidence_quantiles") or []
        labeled = row.get("labeled") or 0
        if not labeled or len(quantiles) != len(QUANTILE_LEVELS):
            continue
        fraction_below = float(np.interp(threshold, quantiles, QUANTILE_LEVELS, left=0.0, right=1.0))
        above = labeled * (1.0 - fraction_below)
        total += min(above, cap) if cap else above
    return int(round(total))


def threshold_sweep(stats, settings):
    """Rows of (min_confidence, labeled images it would keep before and after the class cap)."""
    current = settings.get("min_confidence")
    thresholds = sorted(set(SWEEP_THRESHOLDS) | ({round(float(current), 4)} if current is not None else set()))
    histogram = stats["confidence_histogram"]
    labeled = int(sum(histogram["counts"]))
    cap = settings.get("per_class") if isinstance(settings.get("per_class"), int) else None
    rows = []
    for threshold, above in zip(thresholds, above_threshold_counts(histogram, thresholds)):
        rows.append({
            "min_confidence": threshold,
            "above_threshold": above,
            "fraction_of_labeled": above / labeled if labeled else None,
            # Interpolated deciles can overshoot the exact count; the cap only ever removes images.
            "estimated_kept": min(above, estimated_kept(stats["per_class"], threshold,
                                                        cap if cap and cap > 0 else None)),
            "current": current is not None and abs(threshold - float(current)) < 1e-9,
        })
    return rows


def worst_first(row):
    """Sort key: classes nobody was labeled as first, then lowest mean confidence, then fewest kept."""
    mean = row.get("mean_confidence")
    return (-1.0 if mean is None else mean, row.get("kept") or 0, row["class"])


def class_rows(stats, class_names):
    rows = []
    for index, source in enumerate(stats["per_class"]):
        row = dict(source)
        row.setdefault("class", index)
        name = row.get("name")
        if name is None and index < len(class_names):
            name = class_names[index]
        row["name"] = str(name if name is not None else f"class_{index}")
        kept, written = row.get("kept") or 0, row.get("written")
        row["duplication_factor"] = written / kept if kept and written is not None else None
        rows.append(row)
    return sorted(rows, key=worst_first)


def accounting_problems(counts):
    """Which of the contract's accounting identities do not hold (empty when they all do)."""
    if any(counts.get(name) is None for name in COUNT_NAMES):
        return []
    identities = [("read", ("rejected", "labeled")),
                  ("labeled", ("below_threshold", "over_cap", "kept", "unavailable")),
                  ("written", ("kept", "duplicates"))]
    problems = []
    for total, parts in identities:
        found = sum(counts[part] for part in parts)
        if counts[total] != found:
            problems.append(f"{total} = {counts[total]:,} but {' + '.join(parts)} = {found:,}")
    return problems


def summarize(labels, manifest, stats, holdout=None):
    """The report's content as one JSON-ready dict (see the module docstring)."""
    manifest = manifest or {}
    settings = dict(manifest.get("settings") or {})
    # First among the warnings and shown as a banner: nothing else in the report matters then.
    random_teacher = (manifest.get("teacher") or {}).get("random_init") is True
    warnings = [RANDOM_TEACHER_WARNING] if random_teacher else []
    if not manifest:
        warnings.append(f"{MANIFEST_FILE} is missing: the run either did not finish or was written by another "
                        "tool, so counts before selection (read, rejected, below threshold, over cap) are unknown.")
    if stats.get("recomputed_from_records"):
        warnings.append("stats.json was recomputed from the written records (--recompute): 'labeled' and "
                        "'above threshold' count only kept images, and the histograms cover kept images only.")
    per_class = class_rows(stats, stats.get("class_names") or [])
    labeling_teacher = (manifest.get("teacher") or {}).get("teacher_id")
    if holdout and labeling_teacher and holdout.get("teacher_id") not in (None, labeling_teacher):
        warnings.append(f"The holdout was evaluated with teacher {holdout['teacher_id']}, but teacher "
                        f"{labeling_teacher} labeled this run: its calibration says little about these labels.")
    holdout_by_class = {row["class"]: row for row in (holdout or {}).get("per_class") or []}
    for row in per_class if holdout_by_class else []:
        found = holdout_by_class.get(row["class"], {})
        row["holdout_images"], row["holdout_accuracy"] = found.get("images", 0), found.get("accuracy")
    counts = {name: (manifest.get("counts") or {}).get(name) for name in COUNT_NAMES}
    if counts["unavailable"] is None and counts["read"] is not None:
        counts["unavailable"] = 0  # a run labeled before selection fetched bytes again had none
    for name in ("kept", "duplicates", "written"):
        if counts[name] is None:
            counts[name] = sum(row.get(name) or 0 for row in per_class)
    problems = accounting_problems(counts)
    warnings += [f"Accounting does not close: {problem}." for problem in problems]
    written_classes = sum(1 for row in per_class if row.get("written"))
    if per_class and written_classes < len(per_class):
        warnings.append(f"{len(per_class) - written_classes} of {len(per_class)} classes have no written images.")
    return {
        "labels": labels,
        "run_id": manifest.get("run_id"),
        "input": manifest.get("input"),
        "teacher": dict(manifest.get("teacher") or {}),
        "random_teacher": random_teacher,
        "settings": settings,
        "counts": counts,
        "accounting_closes": not problems,
        "rejected_by_reason": dict(manifest.get("rejected_by_reason") or stats.get("rejected_by_reason") or {}),
        "num_classes": stats["num_classes"],
        "confidence_histogram": stats["confidence_histogram"],
        "entropy_histogram": stats["entropy_histogram"],
        "threshold_sweep": threshold_sweep(stats, settings),
        "per_class": per_class,
        "holdout": holdout,
        "warnings": warnings,
    }


def _number(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}"


def format_text(summary, worst_classes=10):
    """The summary as a terminal table."""
    counts, teacher, settings = summary["counts"], summary["teacher"], summary["settings"]
    lines = [f"Label confidence report: {printable(summary['labels'])}"]
    if summary.get("random_teacher"):
        lines += ["", f"WARNING: {RANDOM_TEACHER_WARNING}", ""]
    if teacher:
        lines.append(f"teacher   {printable(teacher.get('teacher_id'))} ({printable(teacher.get('model_name'))}, "
                     f"{summary['num_classes']} classes) from {printable(teacher.get('path'))}")
    if settings:
        pairs = " ".join(f"{printable(key)}={printable(value)}" for key, value in sorted(settings.items()))
        lines += textwrap.wrap(pairs, width=100, initial_indent="settings  ", subsequent_indent=" " * 10,
                               break_on_hyphens=False)
    reasons = ", ".join(f"{printable(reason)} {count:,}" for reason, count in
                        sorted(summary["rejected_by_reason"].items(), key=lambda item: -item[1]))
    accounting = [("read", "read", 0), ("rejected", "rejected", 1), ("labeled", "labeled", 1),
                  ("below threshold", "below_threshold", 2), ("over class cap", "over_cap", 2),
                  ("kept", "kept", 2), ("unavailable at selection", "unavailable", 2), ("duplicates", "duplicates", 0),
                  ("written", "written", 0)]
    lines.append("")
    for label, key, depth in accounting:
        suffix = f"   ({reasons})" if key == "rejected" and reasons else ""
        lines.append(f"  {'  ' * depth}{label:<{20 - 2 * depth}}{_number(counts[key]):>12}{suffix}")
    lines += ["", "  min_confidence  above threshold  of labeled  est. kept (cap)"]
    for row in summary["threshold_sweep"]:
        fraction = "-" if row["fraction_of_labeled"] is None else f"{row['fraction_of_labeled']:.1%}"
        marker = "  <- current" if row["current"] else ""
        lines.append(f"  {row['min_confidence']:>14.2f}  {row['above_threshold']:>15,}  {fraction:>10}  "
                     f"{row['estimated_kept']:>15,}{marker}")
    shown = summary["per_class"][:worst_classes]
    lines += ["", f"  worst {len(shown)} of {len(summary['per_class'])} classes (lowest mean confidence first)",
              f"  {'class':>6}  {'name':<24}{'labeled':>9}{'kept':>9}{'written':>9}{'dup x':>7}{'mean':>7}{'p50':>7}"]
    for row in shown:
        quantiles = row.get("confidence_quantiles") or []
        median = quantiles[5] if len(quantiles) == 11 else None
        lines.append(f"  {printable(row['class']):>6}  {printable(row['name'])[:23]:<24}{_number(row.get('labeled')):>9}"
                     f"{_number(row.get('kept')):>9}{_number(row.get('written')):>9}"
                     f"{_number(row['duplication_factor'], 2):>7}{_number(row.get('mean_confidence'), 2):>7}"
                     f"{_number(median, 2):>7}")
    holdout = summary.get("holdout")
    if holdout:
        lines += ["", f"  holdout {printable(holdout['source'])}: {holdout['evaluated']:,} images, top-1 accuracy "
                      f"{holdout['accuracy']:.1%}, top-{holdout['top_k']} {holdout['top_k_accuracy']:.1%}, "
                      f"ECE ({len(holdout['reliability'])} bins) {holdout['expected_calibration_error']:.3f}"]
    lines += [f"  warning: {printable(warning)}" for warning in summary["warnings"]
              if warning != RANDOM_TEACHER_WARNING]  # the banner above says it
    return "\n".join(lines) + "\n"

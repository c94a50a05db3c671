"""Commit: check the accounting, then publish a run's staged files into OUT_DIR.

The job writes its shards into `OUT_DIR/_staging-RUN_ID/`. Once every shard and every
aggregate exists, this step (one element, at the end of the job on every runner) checks that
the counts close and only then publishes: it deletes the previous run's manifest.json first
(so no reader trusts the old run from then on), removes the previous run's files, moves the
new shards in, writes stats.json, and writes manifest.json LAST. manifest.json is the commit
marker: readers (student.train, pipeline.report) refuse a directory without one, and it
lists the files that belong to the run, so two runs are never mixed even on object stores
where a directory cannot be renamed atomically. If the accounting does not close the job
fails and OUT_DIR is left untouched.
"""

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import records, stats

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
STAGING_PREFIX = "_staging-"
COUNT_NAMES = ("read", "rejected", "labeled", "below_threshold", "over_cap", "kept", "duplicates", "written")


class AccountingError(RuntimeError):
    """The job lost or invented images somewhere: its counts do not close."""


def check_accounting(counts, rejected_written):
    problems = []
    if counts["read"] != counts["rejected"] + counts["labeled"]:
        problems.append(f"read {counts['read']} != rejected {counts['rejected']} + labeled {counts['labeled']}")
    if counts["labeled"] != counts["below_threshold"] + counts["over_cap"] + counts["kept"]:
        problems.append(f"labeled {counts['labeled']} != below_threshold {counts['below_threshold']} + over_cap "
                        f"{counts['over_cap']} + kept {counts['kept']}")
    if counts["written"] != counts["kept"] + counts["duplicates"]:
        problems.append(f"records written {counts['written']} != kept {counts['kept']} + duplicates "
                        f"{counts['duplicates']}")
    if rejected_written != counts["rejected"]:
        problems.append(f"rejection lines written {rejected_written} != rejected {counts['rejected']}")
    if problems:
        raise AccountingError("The labeling job's accounting does not close: " + "; ".join(problems)
                              + ". Nothing was published.")


def _write_json(path, document):
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write((json.dumps(document, indent=2, sort_keys=False) + "\n").encode())


def existing_outputs(output):
    """Paths in `output` that belong to a previous run (its manifest first)."""
    found = []
    for pattern in (MANIFEST_FILE, f"{records.TRAIN_PREFIX}-*", f"{records.REJECTED_PREFIX}-*", STATS_FILE):
        found += [m.path for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
    return found


def _publish(output, staging, file_names):
    old = existing_outputs(output)
    if old:
        FileSystems.delete(old)  # manifest.json is first in the list
    sources = [FileSystems.join(staging, name) for name in file_names]
    targets = [FileSystems.join(output, name) for name in file_names]
    pending = [(s, t) for s, t in zip(sources, targets) if FileSystems.exists(s)]  # a retried commit skips done ones
    if pending:
        FileSystems.rename([s for s, _ in pending], [t for _, t in pending])


class Commit(beam.DoFn):
    """facts dict -> publishes OUT_DIR; yields the manifest."""

    def __init__(self, output, staging, manifest_base, class_names):
        self._output, self._staging = output, staging
        self._manifest_base = manifest_base
        self._class_names = class_names

    def process(self, facts):
        train_files = sorted(facts["train_files"])
        rejected_files = sorted(facts["rejected_files"])
        counts = {name: int(facts[name]) for name in COUNT_NAMES if name != "written"}
        counts["written"] = sum(count for _, count in train_files)
        check_accounting(counts, sum(count for _, count in rejected_files))
        document = stats.stats_document(facts, self._class_names)
        manifest = dict(self._manifest_base)
        manifest.update({
            "counts": counts,
            "rejected_by_reason": document["rejected_by_reason"],
            "files": {"train": [name for name, _ in train_files],
                      "rejected": [name for name, _ in rejected_files]},
        })
        _publish(self._output, self._staging, manifest["files"]["train"] + manifest["files"]["rejected"])
        _write_json(FileSystems.join(self._output, STATS_FILE), document)
        _write_json(FileSystems.join(self._output, MANIFEST_FILE), manifest)
        leftovers = [m.path for m in FileSystems.match([FileSystems.join(self._staging, "*")])[0].metadata_list]
        if leftovers:
            FileSystems.delete(leftovers)
        if FileSystems.exists(self._staging):
            FileSystems.delete([self._staging])
        beam.metrics.Metrics.counter("Commit", "runs_committed").inc()
        yield manifest


def read_manifest(output):
    """The manifest of a committed run in `output`, or None."""
    path = FileSystems.join(output, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())

"""Pseudo-labeled input: the labeling job's manifest check and its soft-label TFRecords.

Reads the output contract of `pipeline.label` (see the README): `manifest.json` next to
the `train-*.tfrecord` shards is the commit marker of a finished run, so a directory
without it is refused, as is a manifest whose schema or class count does not match, or
whose teacher class names (written by the job since they were added to the manifest)
differ from the labeled data's, in order. Only the shards the manifest lists are read
(the --pseudo glob selects among them), each with the record count the manifest gives it
(files.train_counts: every share's size and resume skip come from them, no shard is read to
count), and student.train pins the manifest's run_nonce
(else run_id) in config.json so a resumed run refuses a directory relabelled in between.

Targets: the teacher's full distribution when the job wrote one (--full_distribution),
else its top-k probabilities with the rest of its mass spread evenly over the other classes
(--pseudo_tail=uniform, the default; renormalise: scaled up over the top k), or the top-1
class as a one-hot with --hard_pseudo_labels. Noisy Student's soft targets are the teacher's
distribution at temperature 1 (the job's --temperature=1).
"""

import dataclasses
import fnmatch
import json
import os

import tensorflow as tf

from student import sources
from student.config import ConfigError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclasses.dataclass
class PseudoSource:
    pattern: str
    files: list
    manifest: dict

    @property
    def top_k(self):
        return int(self.manifest["settings"]["top_k"])

    @property
    def full_distribution(self):
        return bool(self.manifest["settings"].get("full_distribution", False))

    @property
    def num_classes(self):
        return int(self.manifest["teacher"]["num_classes"])

    @property
    def teacher_id(self):
        return self.manifest["teacher"].get("teacher_id")

    @property
    def run_id(self):
        """The labeling job these records come from (a resumed training run must see the same one).

        The manifest's run_nonce is unique per job; its run_id only hashes the settings, so a
        relabelling with the same settings would keep it. Older manifests have only run_id.
        """
        return self.manifest.get("run_nonce") or self.manifest.get("run_id")

    @property
    def file_counts(self):
        """Records per selected file, from the manifest's files.train_counts (checked by open_pseudo)."""
        listed = dict(zip(self.manifest["files"]["train"], self.manifest["files"]["train_counts"]))
        return [int(listed[os.path.basename(name)]) for name in self.files]

    def share(self, pipeline_index=0, num_pipelines=1):
        """This pipeline's share as an epochs.Share; its size and every resume skip come from the
        manifest's per-shard counts, so nothing is read to count it."""
        counts = self.file_counts
        share = sources.tfrecord_share(self.files, lambda: counts, pipeline_index, num_pipelines, self._parse)
        share.total = sum(share.count_segments())
        return share

    def records(self, pipeline_index=0, num_pipelines=1):
        """(records_for_epoch(order_seed=None), record count) of this pipeline's share."""
        share = self.share(pipeline_index, num_pipelines)
        return share.records_for_epoch, share.num_records

    def _parse(self, record):
        features = {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "label/top_k_indices": tf.io.FixedLenFeature([self.top_k], tf.int64),
            "label/top_k_probabilities": tf.io.FixedLenFeature([self.top_k], tf.float32),
        }
        if self.full_distribution:
            features["label/distribution"] = tf.io.FixedLenFeature([self.num_classes], tf.float32)
        example = tf.io.parse_single_example(record, features)
        parsed = {"image": example["image/encoded"], "top_k_indices": example["label/top_k_indices"],
                  "top_k_probabilities": example["label/top_k_probabilities"]}
        if self.full_distribution:
            parsed["distribution"] = example["label/distribution"]
        return parsed


def soft_targets(record, num_classes, hard=False, tail="uniform"):
    """The student's target distribution (float32, num_classes) for one parsed record.

    A record holds the teacher's top k probabilities as the teacher computed them (they sum
    to 1 - the tail's mass). tail="uniform" keeps them and spreads the tail's mass evenly over
    the other num_classes - k classes: Noisy Student trains on the full distribution, and this
    is the closest distribution the k stored numbers determine (the same top k, the same
    entropy-maximising rest), at no bytes beyond them (README: soft targets). "renormalise"
    drops the tail and scales the top k up to 1.
    """
    if hard:
        return tf.one_hot(record["top_k_indices"][0], num_classes, dtype=tf.float32)
    if "distribution" in record:
        probabilities = record["distribution"]
        return probabilities / tf.maximum(tf.reduce_sum(probabilities), 1e-12)
    top_k = tf.scatter_nd(tf.expand_dims(record["top_k_indices"], -1), record["top_k_probabilities"], [num_classes])
    if tail == "renormalise":
        return top_k / tf.maximum(tf.reduce_sum(top_k), 1e-12)
    in_top_k = tf.scatter_nd(tf.expand_dims(record["top_k_indices"], -1),
                             tf.ones_like(record["top_k_probabilities"]), [num_classes])
    # float32 top k can sum a rounding above 1: the tail is never negative. With k equal to
    # the class count there is no other class (divide_no_nan: nothing is spread).
    tail_mass = tf.maximum(1.0 - tf.reduce_sum(top_k), 0.0)
    targets = top_k + (1.0 - in_top_k) * tf.math.divide_no_nan(tail_mass, num_classes - tf.reduce_sum(in_top_k))
    return targets / tf.maximum(tf.reduce_sum(targets), 1e-12)


def read_manifest(directory, flag="pseudo"):
    path = os.path.join(directory, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"--{flag}: no {MANIFEST_FILE} in {directory}. The labeling job writes it last, as its "
                          "commit marker: this is not a finished pipeline.label output.")
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--{flag}: {path} is not valid JSON: {error}") from error


def _class_names_problem(manifest_names, labeled_names):
    """Why the teacher's class order differs from the labeled data's, or None when it does not."""
    manifest_names, labeled_names = [str(n) for n in manifest_names], [str(n) for n in labeled_names]
    if manifest_names == labeled_names:
        return None
    if len(manifest_names) != len(labeled_names):
        return f"{len(manifest_names)} teacher classes, {len(labeled_names)} labeled classes"
    first = next(i for i, (a, b) in enumerate(zip(manifest_names, labeled_names)) if a != b)
    return f"class {first} is {manifest_names[first]!r} for the teacher but {labeled_names[first]!r} for --labeled"


def _names_preview(names, limit=5):
    shown = ", ".join(repr(str(name)) for name in list(names)[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def manifest_files(pattern, manifest, path, flag="pseudo"):
    """The shards the manifest lists that `pattern` selects, in order; every one must exist.

    The manifest, not the directory listing, says which files belong to the run: a stray or
    half-published shard beside them is never read. A glob may select a subset (one shard,
    for a smoke run), matched against the listed names.
    """
    directory, name_pattern = os.path.dirname(pattern), os.path.basename(pattern)
    listed = manifest["files"]["train"]
    if not isinstance(listed, list) or not all(isinstance(name, str) and name == os.path.basename(name)
                                               for name in listed):
        raise ConfigError(f"--{flag}: {path} files.train must be a list of file names in that directory.")
    selected = sorted(os.path.join(directory, name) for name in listed if fnmatch.fnmatchcase(name, name_pattern))
    if not selected:
        raise ConfigError(f"--{flag}={pattern} selects none of the {len(listed)} train files {path} lists "
                          f"({', '.join(listed[:3])}{', ...' if len(listed) > 3 else ''}).")
    missing = [name for name in selected if not tf.io.gfile.exists(name)]
    if missing:
        raise ConfigError(f"--{flag}: {path} lists {len(missing)} file(s) that are missing, e.g. {missing[0]}; "
                          "the run was partly deleted, copied or is being replaced. Relabel or copy it whole.")
    return selected


def open_pseudo(pattern, labeled_num_classes, flag="pseudo", labeled_class_names=None):
    """Checks the manifest beside `pattern` against the labeled data; returns a PseudoSource.

    `labeled_class_names` (the labeled source's names, in class index order, when it knows
    them) must equal the teacher's names the manifest records: the same count in another
    order would silently permute every pseudo-label.
    """
    directory = os.path.dirname(pattern)
    manifest = read_manifest(directory, flag)
    path = os.path.join(directory, MANIFEST_FILE)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(f"--{flag}: {path} has schema_version {version!r}; this trainer reads schema_version "
                          f"{SCHEMA_VERSION}.")
    try:
        teacher_classes = int(manifest["teacher"]["num_classes"])
        int(manifest["settings"]["top_k"])
        manifest["counts"]["written"], manifest["files"]["train"]
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"--{flag}: {path} lacks {error} (teacher.num_classes, settings.top_k, counts.written "
                          "and files.train are required).") from error
    if teacher_classes != labeled_num_classes:
        raise ConfigError(f"--{flag}: the teacher in {path} labeled {teacher_classes} classes but the labeled data "
                          f"(--labeled) has {labeled_num_classes}; pseudo and labeled targets must share classes.")
    teacher_names = manifest["teacher"].get("class_names")
    if teacher_names is not None and labeled_class_names is not None:
        problem = _class_names_problem(teacher_names, labeled_class_names)
        if problem:
            raise ConfigError(f"--{flag}: the teacher in {path} names its classes {_names_preview(teacher_names)} "
                              f"but the labeled data (--labeled) names them {_names_preview(labeled_class_names)}: "
                              f"{problem}. Pseudo-label indices would mean other classes; relabel with a teacher "
                              "of the labeled data's class order.")
    if not int(manifest["counts"]["written"]):
        counts = manifest["counts"]
        raise ConfigError(f"--{flag}: the labeling run in {directory} wrote no records (read "
                          f"{counts.get('read')}, rejected {counts.get('rejected')}, below --min_confidence "
                          f"{counts.get('below_threshold')}); there is nothing to co-train on.")
    files = manifest_files(pattern, manifest, path, flag)
    _check_train_counts(manifest, path, flag)
    return PseudoSource(pattern, files, manifest)


def _check_train_counts(manifest, path, flag):
    """files.train_counts (records per train shard, in files.train order) must be there and add up
    to counts.written: the student takes every epoch size and resume skip from them. Manifests
    written before the job recorded them are refused rather than counted (a pass over every
    shard at every start is what they replace)."""
    counts = manifest["files"].get("train_counts")
    if counts is None:
        raise ConfigError(f"--{flag}: {path} has no files.train_counts (records per train shard), which "
                          "pipeline.label writes since the student stopped counting shards at start-up; relabel "
                          "with this version of pipeline.label.")
    if (not isinstance(counts, list) or len(counts) != len(manifest["files"]["train"])
            or not all(isinstance(count, int) and count >= 0 for count in counts)):
        raise ConfigError(f"--{flag}: {path} files.train_counts must be a list of record counts (integers >= 0), "
                          "one per name in files.train.")
    if sum(counts) != int(manifest["counts"]["written"]):
        raise ConfigError(f"--{flag}: {path} files.train_counts add up to {sum(counts)} records but counts.written "
                          f"is {manifest['counts']['written']}; the manifest is inconsistent.")

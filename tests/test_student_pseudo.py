"""The pseudo-label input: manifest checks and reading the labeling job's records."""

import json

import numpy as np
import pytest

from student import pseudo
from student.config import ConfigError
from test_student_fixtures import write_pseudo_labels


def test_a_class_count_mismatch_is_refused_before_training(tmp_path):
    pattern = write_pseudo_labels(str(tmp_path), num_classes=5, num_examples=5)
    with pytest.raises(ConfigError, match=r"--pseudo: the teacher in .*manifest.json labeled 5 classes but the "
                                          r"labeled data \(--labeled\) has 3"):
        pseudo.open_pseudo(pattern, labeled_num_classes=3)


def test_a_missing_manifest_means_an_unfinished_run(tmp_path):
    pattern = write_pseudo_labels(str(tmp_path), write_manifest=False)
    with pytest.raises(ConfigError, match="no manifest.json .* not a finished pipeline.label output"):
        pseudo.open_pseudo(pattern, 3)


@pytest.mark.parametrize("overrides, message", [
    ({"schema_version": 2}, "schema_version 2"),
    ({"teacher": {"model_name": "resnet_rs_tiny"}}, "lacks 'num_classes'"),
])
def test_a_manifest_of_another_schema_is_refused(tmp_path, overrides, message):
    pattern = write_pseudo_labels(str(tmp_path), manifest_overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        pseudo.open_pseudo(pattern, 3)


def test_a_run_that_kept_nothing_is_refused_with_its_counts(tmp_path):
    counts = {"read": 9, "rejected": 0, "labeled": 9, "below_threshold": 9, "over_cap": 0, "kept": 0,
              "duplicates": 0, "written": 0}
    pattern = write_pseudo_labels(str(tmp_path), manifest_overrides={"counts": counts})
    with pytest.raises(ConfigError, match="wrote no records .*below --min_confidence 9.* nothing to co-train on"):
        pseudo.open_pseudo(pattern, 3)


def test_the_records_give_images_and_top_k_targets_with_their_tail(tmp_path):
    pattern = write_pseudo_labels(str(tmp_path), num_examples=6, top_k=2)
    source = pseudo.open_pseudo(pattern, 3)
    records_for_epoch, count = source.records()
    assert count == 6 and source.top_k == 2 and source.teacher_id == "f" * 16
    for record in records_for_epoch().take(6):
        written = record["top_k_probabilities"].numpy()
        target = pseudo.soft_targets(record, 3).numpy()
        assert target.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(target[record["top_k_indices"].numpy()], written, rtol=1e-6)
        assert target[3 - int(record["top_k_indices"].numpy().sum())] == pytest.approx(1 - written.sum(), abs=1e-6)
        renormalised = pseudo.soft_targets(record, 3, tail="renormalise").numpy()
        assert (renormalised > 0).sum() == 2 and np.argmax(renormalised) == int(record["top_k_indices"][0])
        assert record["image"].numpy()[:2] == b"\xff\xd8"  # JPEG bytes, decoded later by the augmentation


def test_the_full_distribution_is_used_when_the_job_wrote_it(tmp_path):
    pattern = write_pseudo_labels(str(tmp_path), num_examples=3, full_distribution=True)
    records_for_epoch, _ = pseudo.open_pseudo(pattern, 3).records()
    record = next(iter(records_for_epoch()))
    assert (pseudo.soft_targets(record, 3).numpy() > 0).all()


def test_a_subset_of_shards_is_sized_from_the_manifests_per_shard_counts(tmp_path):
    write_pseudo_labels(str(tmp_path), num_examples=7, num_shards=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 7
    _, count = pseudo.open_pseudo(str(tmp_path / "train-00000-of-00002.tfrecord"), 3).records()
    assert count == 4


@pytest.mark.parametrize("train_counts, message", [
    (None, "has no files.train_counts .* relabel with this version of pipeline.label"),
    ([4], "must be a list of record counts .* one per name in files.train"),
    ([4, 4], "add up to 8 records but counts.written is 7"),
])
def test_a_manifest_without_consistent_per_shard_counts_is_refused(tmp_path, train_counts, message):
    names = ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    files = {"train": names, "rejected": []}
    if train_counts is not None:
        files["train_counts"] = train_counts
    pattern = write_pseudo_labels(str(tmp_path), num_examples=7, manifest_overrides={"files": files})
    with pytest.raises(ConfigError, match=message):
        pseudo.open_pseudo(pattern, 3)

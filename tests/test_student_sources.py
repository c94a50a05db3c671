"""Labeled sources: image folder, TFRecords, and TFDS imagenet2012 through tfds.testing.mock_data."""

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from student import sources
from student.config import ConfigError
from test_student_fixtures import write_image_folder, write_labeled_tfrecords


def labels_of(source, pipeline_index=0, num_pipelines=1):
    records_for_epoch, count = source.records(pipeline_index, num_pipelines)
    labels = [int(record["label"]) for record in records_for_epoch()]
    assert len(labels) == count
    return labels


def test_an_image_folder_indexes_classes_by_sorted_subfolder_name(tmp_path):
    root = write_image_folder(str(tmp_path / "images"), num_classes=3, per_class=3)
    (tmp_path / "images" / "notes.txt").write_text("not a class")
    source = sources.open_source(root)
    assert source.num_classes == 3 and source.class_names == ("class_a", "class_b", "class_c")
    assert sorted(labels_of(source)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Two input pipelines split the images between them, without overlap.
    assert sorted(labels_of(source, 0, 2) + labels_of(source, 1, 2)) == sorted(labels_of(source))


def test_an_image_folder_is_permuted_per_epoch_seed(tmp_path):
    source = sources.open_source(write_image_folder(str(tmp_path / "images"), num_classes=2, per_class=6))
    records_for_epoch, _ = source.records()
    first = [int(r["label"]) for r in records_for_epoch(tf.constant([1, 2], tf.int64))]
    again = [int(r["label"]) for r in records_for_epoch(tf.constant([1, 2], tf.int64))]
    other = [int(r["label"]) for r in records_for_epoch(tf.constant([1, 3], tf.int64))]
    assert first == again and sorted(first) == sorted(other) and first != [0] * 6 + [1] * 6


def test_tfrecords_need_num_classes_and_apply_the_label_offset(tmp_path):
    pattern = write_labeled_tfrecords(str(tmp_path / "train"), num_classes=3, num_examples=9, label_offset=1)
    with pytest.raises(ConfigError, match="--num_classes"):
        sources.open_source(pattern)
    source = sources.open_source(pattern, num_classes=3, label_offset=1)
    assert sorted(labels_of(source)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ConfigError, match="matches no files"):
        sources.open_source(str(tmp_path / "missing-*"), num_classes=3)


def test_tfds_imagenet2012_by_name_with_mock_data():
    with tfds.testing.mock_data(num_examples=6):
        source = sources.open_source("tfds:imagenet2012", split="train")
        assert source.num_classes == 1000 and len(source.class_names) == 1000
        records_for_epoch, count = source.records()
        assert count == 6
        # mock_data patches as_dataset and leaves the split metadata empty: one segment, as before.
        assert len(source.share().segments) == 1
        record = next(iter(records_for_epoch()))
        assert record["image"].dtype == tf.string  # encoded: decoding happens in the augmentation
        validation = sources.open_source("tfds:imagenet2012", split="validation", flag="eval")
        assert validation.records()[1] == 6

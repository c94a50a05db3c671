"""Tracker items 8 and 11: the student reads exactly the manifest's shards, of the labeled
data's class order, from the labeling run it started with; the report escapes a class index
from stats.json as it escapes class names."""

import json
import os
import shutil

import pytest
import tensorflow as tf

from pipeline.report import cli as report
from student import config as config_lib
from student import pseudo, train
from student.config import ConfigError, TrainConfig
from test_student_fixtures import small_flags, write_pseudo_labels


# --- 8: the student's pseudo-label input ----------------------------------------------------

def _rewrite_manifest(directory, **changes):
    path = os.path.join(directory, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_the_student_reads_exactly_the_manifests_shards(tmp_path):
    directory = str(tmp_path / "labels")
    pattern = write_pseudo_labels(directory, num_classes=3, num_examples=6, num_shards=2)
    listed = [os.path.join(directory, f"train-0000{i}-of-00002.tfrecord") for i in range(2)]
    # A stray shard beside the run (a half-published relabelling, a copy): never read.
    shutil.copy(listed[0], os.path.join(directory, "train-00002-of-00003.tfrecord"))
    source = pseudo.open_pseudo(pattern, 3)
    assert source.files == listed
    records_for_epoch, count = source.records()
    assert count == 6 == sum(1 for _ in records_for_epoch())
    # A glob may still pick a subset of the listed shards.
    assert pseudo.open_pseudo(listed[1], 3).files == [listed[1]]
    os.remove(listed[1])
    with pytest.raises(ConfigError, match=r"manifest.json lists 1 file\(s\) that are missing, e.g. .*train-00001"):
        pseudo.open_pseudo(pattern, 3)
    with pytest.raises(ConfigError, match="selects none of the 2 train files"):
        pseudo.open_pseudo(os.path.join(directory, "rejected-*"), 3)


def test_a_teacher_of_another_class_order_is_refused(tmp_path):
    directory = str(tmp_path / "labels")
    pattern = write_pseudo_labels(directory, num_classes=3, num_examples=6)
    _rewrite_manifest(directory, teacher={"class_names": ["class_b", "class_a", "class_c"]})
    with pytest.raises(ConfigError, match=r"names its classes \['class_b', 'class_a', 'class_c'\] \(3\) but the "
                                          r"labeled data \(--labeled\) names them \['class_a', 'class_b', 'class_c'\] "
                                          r"\(3\): class 0 is 'class_b' for the teacher but 'class_a' for --labeled"):
        pseudo.open_pseudo(pattern, 3, labeled_class_names=("class_a", "class_b", "class_c"))
    assert pseudo.open_pseudo(pattern, 3, labeled_class_names=("class_b", "class_a", "class_c")).num_classes == 3


def test_training_refuses_pseudo_labels_of_another_class_order(image_folder, tmp_path):
    directory = str(tmp_path / "labels")
    pattern = write_pseudo_labels(directory, num_classes=3, num_examples=6)
    _rewrite_manifest(directory, teacher={"class_names": ["class_c", "class_b", "class_a"]})
    config = TrainConfig(**small_flags(image_folder, str(tmp_path / "run"), pseudo=pattern))
    with pytest.raises(ConfigError, match="class 0 is 'class_c' for the teacher but 'class_a' for --labeled"):
        train._open_inputs(config, tf.distribute.get_strategy())


def test_a_resumed_run_refuses_a_relabelled_pseudo_directory(image_folder, tmp_path):
    directory = str(tmp_path / "labels")
    pattern = write_pseudo_labels(directory, num_classes=3, num_examples=6)
    model_dir = str(tmp_path / "run")

    def start(**overrides):
        config = TrainConfig(**small_flags(image_folder, model_dir, pseudo=pattern, **overrides))
        train._open_inputs(config, tf.distribute.get_strategy())
        config_lib.check_resumable(config)
        return config

    first = start()
    assert first.pseudo_run_id == "0123456789abcdef"
    first.write()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo_run_id"] == "0123456789abcdef"
    start()  # the same labeling run resumes
    _rewrite_manifest(directory, run_id="fedcba9876543210")  # relabelled in place
    with pytest.raises(ConfigError, match=r"--pseudo_run_id='fedcba9876543210' but .*config.json \(the run being "
                                          r"resumed\) has '0123456789abcdef'"):
        start()
    with pytest.raises(ConfigError, match="--pseudo_run_id=0123456789abcdef but .* holds labeling run "
                                          "'fedcba9876543210'"):
        start(pseudo_run_id="0123456789abcdef")
    with pytest.raises(ConfigError, match="--pseudo_run_id: only applies with --pseudo"):
        config_lib.validate(TrainConfig(**small_flags(image_folder, model_dir, pseudo_run_id="x")))


# --- 11: the report escapes the class index ----------------------------------------------------

def test_a_class_index_from_stats_json_is_escaped_in_text_and_html(tmp_path):
    from test_report import write_synthetic_run

    directory = tmp_path / "labels"
    _, stats = write_synthetic_run(directory)
    stats["per_class"][0]["class"] = "\x1b[2J<script>alert(2)</script>"
    (directory / "stats.json").write_text(json.dumps(stats))
    _, text = report.build_report(str(directory), output_format="text")
    assert "\x1b" not in text and "\\x1b[2J<script>alert(2)</script>" in text
    report.build_report(str(directory), str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert(2)" not in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page

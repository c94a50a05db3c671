"""Tracker item 6: teacher.json is validated field by field; the keras floor; the report
loads only a valid teacher."""

import json
import os
import re

import pytest
import tensorflow as tf

from teacher import metadata
from test_student_fixtures import REPOSITORY


# --- 6: teacher.json, the keras floor, the report's holdout -------------------------------

def _teacher_record(**changes):
    record = {"model_name": "resnet_rs_tiny", "num_classes": 2, "class_names": ["cat", "dog"],
              "eval_image_size": 32, "mean_rgb": [123.675, 116.28, 103.53], "stddev_rgb": [58.395, 57.12, 57.375],
              "crop_padding": 5, "teacher_id": "0123456789abcdef", "source": "random-init", "random_init": True,
              "created": "2025-01-01T00:00:00+00:00", "schema_version": 1}
    record.update(changes)
    return record


def test_a_valid_teacher_json_reads():
    meta = metadata.TeacherMetadata.from_json(json.dumps(_teacher_record()), "teacher.json")
    assert meta.class_names == ("cat", "dog") and meta.eval_image_size == 32


@pytest.mark.parametrize("changes, message", [
    ({"eval_image_size": 10 ** 7}, "eval_image_size must be an integer from 8 to 1024"),
    ({"eval_image_size": 32.5}, "eval_image_size must be an integer"),
    ({"stddev_rgb": [0, 0, 0]}, r"stddev_rgb must be 3 numbers in \(0, 255\]"),
    ({"stddev_rgb": [58.0, 57.0]}, "stddev_rgb must be 3 numbers"),
    ({"mean_rgb": [1e308 * 10, 0, 0]}, "mean_rgb must be 3 numbers in"),
    ({"mean_rgb": ["123", 116, 103]}, "mean_rgb must be 3 numbers in"),
    ({"model_name": "resnet_rs_9000"}, "model_name must be one of .*resnet_rs_tiny"),
    ({"model_name": ["resnet_rs_tiny"]}, "model_name must be one of"),
    ({"class_names": [1, 2]}, "class_names must be a list of strings"),
    ({"class_names": "catdog"}, "class_names must be a list of strings"),
    ({"class_names": ["cat", "dog", "cow"]}, "num_classes is 2 but class_names has 3"),
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"num_classes": -2}, "num_classes must be an integer from 1"),
    ({"schema_version": "1"}, "schema_version must be a positive integer, got '1'"),
    ({"schema_version": 2}, "schema_version 2; this code reads up to 1"),
    ({"crop_padding": -1}, "crop_padding must be an integer from 0"),
    ({"random_init": "no"}, "random_init must be true or false"),
    ({"teacher_id": 7}, "teacher_id must be a string"),
])
def test_teacher_json_types_and_ranges_are_checked(changes, message):
    with pytest.raises(metadata.TeacherError, match=message):
        metadata.TeacherMetadata.from_json(json.dumps(_teacher_record(**changes)), "teacher.json")


def test_teacher_json_that_is_not_an_object_is_named():
    with pytest.raises(metadata.TeacherError, match="must hold a JSON object, not list"):
        metadata.TeacherMetadata.from_json("[1, 2]", "teacher.json")


def test_setup_requires_a_keras_with_the_safe_mode_fixes():
    from packaging.requirements import Requirement
    from packaging.version import Version

    with open(os.path.join(REPOSITORY, "setup.py")) as f:
        text = f.read()
    keras = [Requirement(spec) for spec in re.findall(r'"(keras[<>=!][^"]*)"', text)]
    assert len(keras) == 1
    allowed = keras[0].specifier
    for vulnerable in ("3.5.0", "3.8.0", "3.9.0", "3.11.2", "3.12.0", "3.13.0", "3.13.1"):
        assert Version(vulnerable) not in allowed, vulnerable
    import keras as installed

    for fixed in ("3.12.1", "3.13.2", "3.14.0", installed.__version__):
        assert Version(fixed) in allowed, fixed


@pytest.fixture
def saved_model_loads(monkeypatch):
    """Every path tf.saved_model.load is called with (the call then fails as it would on bad data)."""
    calls = []

    def refuse(path, *args, **kwargs):
        calls.append(path)
        raise RuntimeError("tf.saved_model.load was called")

    monkeypatch.setattr(tf.saved_model, "load", refuse)
    return calls


def test_the_holdout_report_never_loads_a_directory_that_is_not_a_teacher(tmp_path, saved_model_loads):
    from pipeline.report.holdout import evaluate
    from pipeline.report.summary import ReportError

    bare = tmp_path / "bare"
    module = tf.Module()
    module.serve = tf.function(lambda images: {"logits": tf.zeros([tf.shape(images)[0], 2])},
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    tf.saved_model.save(module, str(bare), signatures={"serve_images": module.serve})
    holdout = tmp_path / "holdout"
    (holdout / "cat").mkdir(parents=True)
    (holdout / "cat" / "a.png").write_bytes(b"not read")
    with pytest.raises(ReportError, match="teacher.json is missing"):
        evaluate(str(bare), str(holdout))
    (bare / "teacher.json").write_text(json.dumps(_teacher_record(eval_image_size=10 ** 7)))
    with pytest.raises(ReportError, match="eval_image_size must be"):
        evaluate(str(bare), str(holdout))
    assert saved_model_loads == []

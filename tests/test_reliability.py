"""Failure modes of untrusted or broken inputs, one test (or a few) per tracker item.

4  a TFRecord length field that claims terabytes is a rejection, not a MemoryError
5  a NaN prediction is a rejection at Label; a NaN loss stops the student, saving nothing

Split by theme: teacher.json (6) in test_teacher_json.py, the student's pseudo-label input
and the report's escaping (8, 11) in test_pseudo_label_input.py, kills during checkpoint
writes (12) in test_checkpoint_kills.py.
"""

import json
import struct

import numpy as np
import pytest
import tensorflow as tf

from pipeline import label, records, sources
from pipeline.elements import Rejection
from student import inputs, train
from student import sources as student_sources
from student import trainer as trainer_lib
from student.config import TrainConfig
from teacher import predictor
from test_student_fixtures import small_flags, write_pseudo_labels


# --- 4: the TFRecord reader -------------------------------------------------------------

def _example(image_bytes):
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _crafted_header(length):
    """A TFRecord header claiming `length` bytes, with the correct CRC of that length."""
    packed = struct.pack("<Q", length)
    return packed + struct.pack("<I", records._masked_crc32c(packed))


def test_a_crafted_tfrecord_length_is_a_rejection_not_a_memory_error(tmp_path):
    path = tmp_path / "crafted.tfrecord"
    good = [_example(b"first image"), _example(b"second image")]
    path.write_bytes(b"".join(records.tfrecord_frame(payload) for payload in good) + _crafted_header(2 ** 40)
                     + records.tfrecord_frame(_example(b"never reached")))
    with open(path, "rb") as handle:
        frames = records.read_frames(handle, str(path))
        assert [next(frames), next(frames)] == good
        with pytest.raises(ValueError, match=r"record 2 at byte \d+: TFRecord length 1099511627776 is over the "
                                             r"268435456-byte limit"):
            next(frames)

    # The TFRecord source: the two good records are candidates, the rest of the file one rejection.
    outputs = list(sources.read_tfrecord_file(str(path), "image/encoded", sources.DEFAULT_MAX_BYTES))
    assert [(o.uri, o.data) for o in outputs[:2]] == [(f"{path}#0", b"first image"), (f"{path}#1", b"second image")]
    assert len(outputs) == 3 and isinstance(outputs[2], Rejection)
    rejection = outputs[2]
    assert rejection.uri == str(path) and rejection.category == "corrupt_tfrecord" and "limit" in rejection.reason


def test_a_length_under_the_limit_on_a_short_file_is_truncation(tmp_path):
    path = tmp_path / "short.tfrecord"
    path.write_bytes(_crafted_header(records.MAX_RECORD_BYTES) + b"only a few bytes")
    with open(path, "rb") as handle, pytest.raises(ValueError, match="record 0 at byte 0: truncated TFRecord payload"):
        list(records.read_frames(handle, str(path)))


# --- 5: non-finite predictions and losses -------------------------------------------------

def test_a_nan_prediction_is_rejected_at_label_and_the_accounting_closes(photo_folder, tiny_teacher, tmp_path,
                                                                         monkeypatch):
    from conftest import TEACHER_CLASSES

    folder, _, _ = photo_folder
    listing = tmp_path / "inputs.txt"
    # astronaut is the one square photo (160x160 after the fixture's thumbnail); the teacher
    # returns NaN for it, as a teacher with a numerically broken layer would for some inputs.
    listing.write_text("".join(f"{folder / name}\n" for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")))
    original = predictor.Teacher.predict

    def predict_nan_for_squares(self, images, **kwargs):
        result = original(self, images, **kwargs)
        square = np.array([image.shape[0] == image.shape[1] for image in images])
        result.confidence = np.where(square, np.float32("nan"), result.confidence)
        result.entropy = np.where(square, np.float32("nan"), result.entropy)
        return result

    monkeypatch.setattr(predictor.Teacher, "predict", predict_nan_for_squares)
    output = tmp_path / "labels"
    label.run([f"--teacher={tiny_teacher}", f"--input={listing}", f"--output={output}", "--num_shards=2",
               "--max_batch_size=4", "--min_confidence=0", "--allow_random_teacher"])
    manifest = json.loads((output / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["read"], counts["rejected"], counts["labeled"]) == (3, 1, 2)
    assert manifest["rejected_by_reason"] == {"non_finite_prediction": 1}
    rejected = [json.loads(line) for name in manifest["files"]["rejected"]
                for line in (output / name).read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["uri"].endswith("astronaut.jpg") and rejected[0]["stage"] == "label"
    assert "confidence nan" in rejected[0]["reason"]
    stats = json.loads((output / "stats.json").read_text())
    assert sum(stats["confidence_histogram"]["counts"]) == 2
    # 8: the manifest names the teacher's classes, in its order, for the student to check.
    assert manifest["teacher"]["class_names"] == TEACHER_CLASSES


def test_a_non_finite_loss_stops_training_and_keeps_the_last_finite_checkpoint(image_folder, tmp_path, monkeypatch):
    original = trainer_lib.Trainer._gradients

    def nan_from_step_3(self, batch):  # an overflowing step: NaN loss and gradients from the third on
        gradients, labeled_loss, pseudo_loss = original(self, batch)
        nan = tf.where(self.optimizer.iterations >= 2, float("nan"), 0.0)
        return [g + nan for g in gradients], labeled_loss + nan, pseudo_loss

    monkeypatch.setattr(trainer_lib.Trainer, "_gradients", nan_from_step_3)
    pseudo_glob = write_pseudo_labels(str(tmp_path / "labels"), num_classes=3, num_examples=6)
    model_dir = tmp_path / "run"
    config = TrainConfig(**small_flags(image_folder, str(model_dir), pseudo=pseudo_glob, pseudo_ratio=1,
                                       train_steps=5, checkpoint_every=1, log_every=1))
    with pytest.raises(trainer_lib.NonFiniteError,
                       match=r"the loss is not finite at step 3 of 5: labeled loss nan, pseudo loss [\d.]+\. Training "
                             r"stopped without checkpointing or exporting; .*checkpoints keeps the last finite "
                             r"checkpoint \(.*ckpt-2\)"):
        train.run(config)
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert latest.endswith("ckpt-2")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        assert not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all(), name
    assert not (model_dir / "model.keras").exists() and not (model_dir / "teacher").exists()


def test_non_finite_weights_are_never_checkpointed(image_folder, tmp_path):
    """A step whose loss was finite can still leave NaN weights (the update overflowed)."""
    config = TrainConfig(**small_flags(image_folder, str(tmp_path / "run"), num_classes=3, labeled_examples=12))
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                                  inputs.InputBuilder(config, student_sources.open_source(image_folder)))
    trainer.save()
    kernel = trainer.model.get_layer("logits").kernel
    kernel.assign(tf.fill(kernel.shape, float("inf")))
    trainer.optimizer.iterations.assign(1)
    with pytest.raises(trainer_lib.NonFiniteError, match=r"the weights after step 1 are not finite .* keeps the "
                                                         r"last finite checkpoint \(.*ckpt-0\)"):
        trainer.save()
    assert tf.train.latest_checkpoint(trainer.checkpoint_directory).endswith("ckpt-0")

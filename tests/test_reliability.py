"""Failure modes of untrusted or broken inputs, one test (or a few) per tracker item.

4  a TFRecord length field that claims terabytes is a rejection, not a MemoryError
5  a NaN prediction is a rejection at Label; a NaN loss stops the student, saving nothing
6  teacher.json is validated field by field; the report loads only a valid teacher
8  the student reads exactly the manifest's shards, of the labeled data's class order,
   from the labeling run it started with
11 the report escapes a class index from stats.json as it escapes class names
12 a kill at any moment, during a checkpoint write included, resumes from a whole checkpoint
"""

import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import label, records, sources
from pipeline.elements import Rejection
from pipeline.report import cli as report
from student import config as config_lib
from student import inputs, pseudo, train
from student import sources as student_sources
from student import trainer as trainer_lib
from student.config import ConfigError, TrainConfig
from teacher import metadata, predictor
from test_student_fixtures import REPOSITORY, small_flags, write_image_folder, write_pseudo_labels


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


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("data") / "images"), num_classes=3, per_class=4)


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


# --- 12: kills during checkpoint writes ---------------------------------------------------------

# Runs in a fresh process: the trainer's own Trainer.save in a loop, every save a new step
# whose every variable holds the step number, so a restored state shows at a glance whether
# it is one whole checkpoint (every value equal to the step restored) or a torn mix.
_CHECKPOINT_LOOP = """
import json, sys
import tensorflow as tf
from student import inputs, sources, trainer as trainer_lib
from student.config import TrainConfig
config = TrainConfig(**json.loads(sys.argv[1]))
trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                              inputs.InputBuilder(config, sources.open_source(config.labeled)))
variables = list(trainer.model.variables) + list(trainer.optimizer.variables)
fill = tf.function(lambda step: [v.assign(tf.fill(v.shape, tf.cast(step, v.dtype))) for v in variables])
step = trainer.restore()
print("ready", flush=True)
while True:
    step += 1
    fill(tf.constant(step))
    trainer.save()
"""
FREEZES = 12


def _torn(directory):
    """What in a checkpoint directory is not part of a committed checkpoint."""
    state = tf.train.get_checkpoint_state(directory)
    committed = int(re.search(r"ckpt-(\d+)$", state.model_checkpoint_path).group(1)) if state else 0
    leftovers = []
    for name in os.listdir(directory):
        number = re.match(r"ckpt-(\d+)", name)
        if name.startswith("checkpoint.tmp") or "_temp" in name or (number and int(number.group(1)) > committed):
            leftovers.append(name)
    return leftovers


def test_kills_at_random_moments_during_checkpoint_writes_resume_from_a_whole_checkpoint(image_folder, tmp_path):
    """SIGSTOP at random moments of a loop that checkpoints without pause, a copy of the
    checkpoint directory as it stands, SIGCONT: each copy is exactly what SIGKILL at that
    moment leaves on disk (a stopped process writes nothing more; data it already wrote
    stays), so one process gives many kills. The last one is a real SIGKILL. Every copy
    must restore the step the checkpoint state names, whole, and take the next save."""
    flags = small_flags(image_folder, str(tmp_path / "writer"), num_classes=3, labeled_examples=12,
                        checkpoint_every=1, keep_checkpoints=2)
    log = open(tmp_path / "writer.log", "w")
    writer = subprocess.Popen([sys.executable, "-c", _CHECKPOINT_LOOP, json.dumps(flags)], cwd=REPOSITORY,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.PIPE,
                              stderr=log, text=True)
    directory = str(tmp_path / "writer" / "checkpoints")
    snapshots = []
    try:
        assert writer.stdout.readline().strip() == "ready", (tmp_path / "writer.log").read_text()[-3000:]
        deadline = time.time() + 120
        while tf.train.latest_checkpoint(directory) is None and time.time() < deadline:
            time.sleep(0.01)
        rng, last_write = random.Random(12), None
        for index in range(FREEZES + 1):
            if index % 2:  # any moment
                time.sleep(rng.uniform(0.0, 0.15))
            else:  # a moment inside a write (its temporary files are there), a new write each time
                until = time.time() + 20
                while time.time() < until:
                    writing = [name for name in os.listdir(directory) if "_temp" in name]
                    if writing and writing != last_write:
                        break
                    time.sleep(0.001)
                last_write = writing
                time.sleep(rng.uniform(0.0, 0.004))
            os.kill(writer.pid, signal.SIGSTOP if index < FREEZES else signal.SIGKILL)
            if index < FREEZES:
                _, status = os.waitpid(writer.pid, os.WUNTRACED)
                assert os.WIFSTOPPED(status)
            else:
                writer.wait()
            snapshots.append(str(tmp_path / f"kill-{index}"))
            shutil.copytree(directory, snapshots[-1])
            if index < FREEZES:
                os.kill(writer.pid, signal.SIGCONT)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
        log.close()
    torn = [_torn(snapshot) for snapshot in snapshots]
    assert sum(1 for leftovers in torn if leftovers) >= 3, f"too few kills landed inside a write: {torn}"

    config = TrainConfig(**{**flags, "model_dir": str(tmp_path / "resumed")})
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                                  inputs.InputBuilder(config, student_sources.open_source(image_folder)))
    variables = list(trainer.model.variables) + list(trainer.optimizer.variables)

    fill_all = tf.function(lambda step: [v.assign(tf.fill(v.shape, tf.cast(step, v.dtype))) for v in variables])
    all_equal = tf.function(lambda step: tf.reduce_all([tf.reduce_all(tf.equal(v, tf.cast(step, v.dtype)))
                                                        for v in variables]))

    def fill(step):
        fill_all(tf.constant(step))

    def assert_whole(step):
        if not bool(all_equal(tf.constant(step))):
            torn_variables = [v.path for v in variables if not np.all(np.asarray(v.numpy()) == step)]
            raise AssertionError(f"restored step {step} but {torn_variables[:5]} hold other values")

    for snapshot, leftovers in zip(snapshots, torn):
        shutil.rmtree(trainer.checkpoint_directory, ignore_errors=True)
        shutil.copytree(snapshot, trainer.checkpoint_directory)
        named = int(re.search(r"ckpt-(\d+)$", tf.train.get_checkpoint_state(snapshot).model_checkpoint_path).group(1))
        fill(-1)
        assert trainer.restore() == named, (snapshot, leftovers)
        assert_whole(named)
        if not leftovers:
            continue
        # The resumed process's manager, over the torn leftovers: its next checkpoint is whole too.
        trainer.manager = tf.train.CheckpointManager(trainer.checkpoint, trainer.checkpoint_directory,
                                                     max_to_keep=config.keep_checkpoints)
        fill(named + 1)
        trainer.save()
        fill(-1)
        assert trainer.restore() == named + 1
        assert_whole(named + 1)

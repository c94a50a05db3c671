"""python -m teacher.export and the import of published weights."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import models
import teacher
from teacher import weights


def _randomise(model, seed=0):
    """Gives every weight a distinct random value: BN gammas of 0 would hide a wrong mapping."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape, name = tuple(weight.shape), weight.name
        if "variance" in name or "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "kernel" in name:
            value = weight.numpy()
        else:
            value = rng.normal(0.0, 0.1, shape)
        weight.assign(value.astype(np.float32))


def test_keras_applications_h5_import_gives_the_same_logits(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    reference = tf_keras.applications.ResNetRS50(weights=None, include_preprocessing=False,
                                                  input_shape=(160, 160, 3))
    _randomise(reference)
    reference.save_weights(str(tmp_path / "resnet-rs-50-i160.h5"))
    ours = models.create("resnet_rs_50")
    weights.load_published_weights(ours, str(tmp_path / "resnet-rs-50-i160.h5"))
    images = np.random.default_rng(1).normal(size=(2, 160, 160, 3)).astype(np.float32)
    expected = reference(images, training=False).numpy()
    # tf_keras ends in a softmax; compare logits by undoing it on both sides.
    ours_probabilities = tf.nn.softmax(ours(images, training=False)).numpy()
    assert np.abs(np.log(ours_probabilities) - np.log(expected)).max() <= 1e-4
    reference.get_layer("predictions").activation = tf_keras.activations.linear
    assert np.abs(ours(images, training=False).numpy() - reference(images, training=False).numpy()).max() <= 1e-4


def test_tpu_reference_checkpoint_import_prefers_ema_values(tmp_path):
    source = models.create("resnet_rs_tiny", num_classes=10)
    _randomise(source, seed=2)
    names, tensors = [], []
    for layer_name, variables in weights.tpu_reference_variable_names(source).items():
        for variable, value in zip(variables, source.get_layer(layer_name).weights):
            names += [variable, variable + "/ExponentialMovingAverage"]
            tensors += [value.numpy() + 1.0, value.numpy()]  # raw weights differ from their EMA
    names.append("global_step")
    tensors.append(np.int64(7))
    prefix = str(tmp_path / "model.ckpt-109475")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    target = models.create("resnet_rs_tiny", num_classes=10)
    weights.load_published_weights(target, prefix)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_tpu_reference_names_follow_creation_order():
    mapping = weights.tpu_reference_variable_names(models.create("resnet_rs_tiny", num_classes=10))
    assert mapping["stem_conv1"] == ["conv2d/kernel"]
    assert mapping["stem_bn4"][0] == "batch_normalization_3/gamma"
    # First block: projection conv+BN come before the block's own convs, SE convs after.
    assert mapping["stage1_block1_shortcut_conv"] == ["conv2d_4/kernel"]
    assert mapping["stage1_block1_conv1"] == ["conv2d_5/kernel"]
    assert mapping["stage1_block1_se_reduce"] == ["conv2d_8/kernel", "conv2d_8/bias"]
    assert mapping["stage1_block1_bn3"][0] == "batch_normalization_7/gamma"
    assert mapping["logits"] == ["dense/kernel", "dense/bias"]


def test_wrong_weights_are_named(tmp_path):
    model = models.create("resnet_rs_tiny", num_classes=10)
    with pytest.raises(teacher.TeacherError, match="--weights=.*nothing"):
        weights.load_published_weights(model, str(tmp_path / "nothing"))
    other = models.create("resnet_rs_tiny", num_classes=5)
    other.save_weights(str(tmp_path / "five.weights.h5"))
    with pytest.raises(ValueError):
        weights.load_published_weights(model, str(tmp_path / "five.weights.h5"))


def _export_cli(*flags):
    return subprocess.run([sys.executable, "-m", "teacher.export", *flags], capture_output=True, text=True,
                          timeout=600)


def test_cli_exports_a_random_init_teacher_marked_as_such(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {c}" for c in "abcdefg") + "\n")
    result = _export_cli("--model=resnet_rs_tiny", "--num_classes=7", f"--class_names={names}",
                         f"--output={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "teacher.json").read_text())
    assert record["random_init"] is True and record["source"] == "random-init"
    assert record["class_names"][2] == "class c" and record["eval_image_size"] == 32
    assert record["teacher_id"] in result.stdout
    predictions = teacher.load(str(tmp_path / "out")).predict(np.zeros((1, 40, 40, 3), np.uint8))
    assert predictions.top_k_indices.shape == (1, 5)


def test_cli_exports_a_training_run(tmp_path):
    model = models.create("resnet_rs_tiny", num_classes=10)
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "resnet_rs_tiny"}))
    result = _export_cli(f"--model_dir={tmp_path / 'run'}", "--class_names=tfds:mnist",
                         f"--output={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "teacher.json").read_text())
    assert record["random_init"] is False and record["class_names"][:2] == ["0", "1"]
    assert record["model_name"] == "resnet_rs_tiny"


@pytest.mark.parametrize("flags, message", [
    (["--model=resnet_rs_51", "--output={tmp}/x"], "--model=resnet_rs_51 is not one of"),
    (["--model=resnet_rs_tiny", "--model_dir=/x", "--output={tmp}/x"], "exactly one of --model_dir"),
    (["--model_dir=/x", "--weights=/w.h5", "--output={tmp}/x"], "--weights goes with --model"),
    (["--model=resnet_rs_tiny"], "--output is required"),
    (["--model=resnet_rs_tiny", "--num_classes=10", "--class_names=tfds:mnist", "--output={tmp}/x",
      "--no_such_flag"], "no_such_flag"),
    (["--model=resnet_rs_tiny", "--class_names=tfds:mnist", "--output={tmp}/x"], "gives 10 names but the model has 1000"),
])
def test_cli_refuses_wrong_flags_before_any_work(tmp_path, flags, message):
    result = _export_cli(*[flag.format(tmp=tmp_path) for flag in flags])
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "x" / "teacher.json").exists()


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path):
    args = ["--model=resnet_rs_tiny", "--num_classes=3", f"--output={tmp_path / 'out'}"]
    assert _export_cli(*args).returncode == 0
    again = _export_cli(*args)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert _export_cli(*args, "--overwrite").returncode == 0

"""End-to-end runs of student.train.run in-process: ram:// model_dir, XLA step, TFDS source."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from models import preprocessing
from student import inputs, sources, train
from student import trainer as trainer_lib
from student.config import TrainConfig
from test_student_fixtures import small_flags, write_image_folder, write_pseudo_labels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("data") / "images"), num_classes=3, per_class=4)


def test_a_non_local_model_dir_gets_checkpoints_summaries_model_and_teacher(folder):
    # TF's ram:// filesystem stands in for gs://: nothing may assume a local path.
    model_dir = "ram://student-run/model"
    pseudo_glob = write_pseudo_labels("ram://student-run/labels", num_classes=3, num_examples=12)
    config = TrainConfig(**small_flags(folder, model_dir, pseudo=pseudo_glob, eval=folder, pseudo_ratio=2,
                                       eval_every=2))
    result = train.run(config)

    assert result["step"] == 4 and result["eval"]["examples"] == 12
    assert 0.0 <= result["eval"]["top_1"] <= result["eval"]["top_5"] == 1.0  # 3 classes: top-5 always right
    with tf.io.gfile.GFile(os.path.join(model_dir, "config.json")) as f:
        recorded = json.load(f)
    assert recorded["model"] == "resnet_rs_tiny" and recorded["num_classes"] == 3
    assert recorded["derived"]["pseudo_batch_size"] == 8 and recorded["labeled_examples"] == 12
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-4")
    assert tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
    assert tf.io.gfile.glob(os.path.join(model_dir, "eval", "events.out.tfevents.*"))
    with tf.io.gfile.GFile(os.path.join(model_dir, "teacher", "teacher.json")) as f:
        exported = json.load(f)
    assert exported["model_name"] == "resnet_rs_tiny"
    assert exported["class_names"] == ["class_a", "class_b", "class_c"]
    model = keras.saving.load_model(result["model"])
    assert model.output_shape == (None, 3) and model.dtype_policy.name == "float32"

    def scalars(kind):
        found = set()
        for path in tf.io.gfile.glob(os.path.join(model_dir, kind, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                found.update((value.tag, event.step) for value in event.summary.value)
        return found

    assert {"loss/labeled", "loss/pseudo", "learning_rate", "images_per_second"} == {t for t, _ in scalars("train")}
    assert {("top_1", 2), ("top_1", 4), ("top_5", 4), ("loss", 4)} <= scalars("eval")  # --eval_every=2

    # The same command on the same model_dir finds the run finished and only re-exports.
    assert train.run(TrainConfig(**small_flags(folder, model_dir, pseudo=pseudo_glob, eval=folder,
                                               pseudo_ratio=2)))["step"] == 4


def test_the_train_step_compiles_with_xla_and_matches_the_graph_step(folder):
    config = TrainConfig(**small_flags(folder, "ram://xla-run", num_classes=3, labeled_examples=12, jit_compile="xla"))
    builder = inputs.InputBuilder(config, sources.open_source(folder))
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(), builder)
    batch = next(iter(builder.train_dataset(tf.distribute.InputContext())))
    hlo = trainer.compute_gradients.experimental_get_compiler_ir(batch)(stage="hlo")
    assert "HloModule" in hlo

    # XLA's and TF's random kernels draw different numbers from one seed, so the
    # comparison turns dropout off (Keras checks the rate when it traces the call).
    for layer in trainer.model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    trainer.compute_gradients = tf.function(trainer._gradients, jit_compile=True)
    xla_gradients, xla_loss, _ = trainer.compute_gradients(batch)
    graph_gradients, graph_loss, _ = tf.function(trainer._gradients, jit_compile=False)(batch)
    assert float(xla_loss) == pytest.approx(float(graph_loss), rel=1e-4)
    for xla, graph in zip(xla_gradients, graph_gradients):
        np.testing.assert_allclose(xla.numpy(), graph.numpy(), rtol=2e-3, atol=2e-5)


def test_the_step_normalises_the_pixels_it_gets_as_the_teachers_eval_transform(folder):
    # The input pipeline ships pixels (uint8 train, float32 eval); the model still sees normalised input,
    # which is what the exported model (final_model, teacher/) expects.
    config = TrainConfig(**small_flags(folder, "ram://normalise-run", num_classes=3, labeled_examples=12))
    source = sources.open_source(folder)
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(), inputs.InputBuilder(config, source,
                                                                                             eval_source=source))
    pixels = next(iter(trainer.inputs.eval_dataset(tf.distribute.InputContext())))["images"]
    model_config = config.model_config
    expected = trainer.model(preprocessing.normalize(pixels, model_config.mean_rgb, model_config.stddev_rgb),
                             training=False)
    np.testing.assert_allclose(trainer.forward_eval(pixels).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_auto_compile_mode_measures_both_and_leaves_the_model_untouched(folder):
    def make_trainer(mode):
        config = TrainConfig(**small_flags(folder, f"ram://auto-{mode}", num_classes=3, labeled_examples=12,
                                           jit_compile=mode))
        return trainer_lib.Trainer(config, tf.distribute.get_strategy(), inputs.InputBuilder(
            config, sources.open_source(folder)))

    measured, untouched = make_trainer("auto"), make_trainer("graph")
    assert set(measured.compile_timings) == {"xla", "graph"}
    assert measured.compile_mode == min(measured.compile_timings, key=measured.compile_timings.get)
    assert untouched.compile_mode == "graph" and untouched.compile_timings == {}
    # The measuring steps ran in training mode (BatchNorm statistics, dropout seeds): all put back.
    for after, fresh in zip(measured.model.variables, untouched.model.variables):
        np.testing.assert_array_equal(after.numpy(), fresh.numpy(), err_msg=after.path)


def test_tfds_imagenet2012_trains_and_evaluates_on_its_validation_split_in_bfloat16(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        config = TrainConfig(**small_flags("tfds:imagenet2012", str(tmp_path / "run"), train_steps=2,
                                           eval_batch_size=4, randaugment_layers=0, precision="bfloat16"))
        result = train.run(config)
    assert result["step"] == 2 and result["eval"]["examples"] == 8
    assert np.isfinite(result["eval"]["loss"])
    # Trained with bfloat16 compute; exported as a float32 model (variables were float32 throughout).
    assert keras.saving.load_model(result["model"]).dtype_policy.name == "float32"
    with tf.io.gfile.GFile(os.path.join(result["teacher"], "teacher.json")) as f:
        assert json.load(f)["num_classes"] == 1000

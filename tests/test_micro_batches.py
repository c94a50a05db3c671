"""Gradient accumulation (--micro_batches) and the memory check made before compiling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from student import device_memory, inputs, pseudo, sources, train
from student import trainer as trainer_lib
from student.config import ConfigError, TrainConfig
from test_student_fixtures import small_flags, write_image_folder, write_pseudo_labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    return {"folder": write_image_folder(str(root / "images"), num_classes=3, per_class=4),
            "pseudo": write_pseudo_labels(str(root / "labels"), num_classes=3, num_examples=12)}


def _trainer(data, **flags):
    config = TrainConfig(**small_flags(data["folder"], "ram://micro", pseudo=data["pseudo"], num_classes=3,
                                       labeled_examples=12, **flags))
    builder = inputs.InputBuilder(config, sources.open_source(data["folder"]), pseudo.open_pseudo(data["pseudo"], 3))
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(), builder)
    # Dropout draws new masks at every call; with it off, a pass depends on its images only.
    for layer in trainer.model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return trainer, next(iter(builder.train_dataset(tf.distribute.InputContext())))


def test_two_micro_batches_sum_the_gradients_and_losses_of_their_two_passes(data):
    trainer, batch = _trainer(data, micro_batches=2)
    gradients, labeled_loss, pseudo_loss = tf.function(trainer._gradients)(batch)  # the step's own loop
    halves = [{key: value[half * len(value) // 2:(half + 1) * len(value) // 2] for key, value in batch.items()}
              for half in (0, 1)]
    passes = [tf.function(trainer._pass_gradients)(half) for half in halves]
    # Each pass is a mix in the step's ratio: 2 labeled + 6 pseudo images of the 4 + 12.
    assert [tuple(half["labeled_images"].shape[:1]) + tuple(half["pseudo_images"].shape[:1])
            for half in halves] == [(2, 6), (2, 6)]
    assert float(labeled_loss) == pytest.approx(float(passes[0][1] + passes[1][1]), rel=1e-5)
    assert float(pseudo_loss) == pytest.approx(float(passes[0][2] + passes[1][2]), rel=1e-5)
    for total, first, second in zip(gradients, passes[0][0], passes[1][0]):
        np.testing.assert_allclose(total.numpy(), (first + second).numpy(), rtol=1e-4, atol=1e-6)
    # And it is not one pass over the whole batch: BatchNorm's statistics are per pass.
    whole = tf.function(trainer._pass_gradients)
    trainer.config.micro_batches = 1
    assert float(whole(batch)[1]) != pytest.approx(float(labeled_loss), rel=1e-6)


def test_a_run_with_micro_batches_trains_and_a_batch_they_do_not_split_is_refused(data, tmp_path):
    result = train.run(TrainConfig(**small_flags(data["folder"], str(tmp_path / "run"), pseudo=data["pseudo"],
                                                 micro_batches=2, train_steps=2)))
    assert result["step"] == 2
    with pytest.raises(ConfigError, match="--micro_batches=3"):
        train.run(TrainConfig(**small_flags(data["folder"], str(tmp_path / "odd"), micro_batches=3)))


def test_a_batch_over_the_replica_memory_is_refused_naming_the_flag_and_a_micro_batch_count_that_fits():
    model = models.create("resnet_rs_tiny", num_classes=3)
    config = TrainConfig(model="resnet_rs_tiny", labeled="x", model_dir="unused", pseudo="p", num_classes=3,
                         batch_size=64, pseudo_ratio=3)
    state, per_image = device_memory.footprint(model, 32, "float32")
    assert state == 16 * model.count_params() - 16 * sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert per_image > 32 * 32 * 3 * 4  # at least the first convolution's output is larger than the input
    # Room for the state and 70 images: 256 a step on one replica needs 4 passes of 64.
    memory = state + 70 * per_image
    with pytest.raises(ConfigError, match=r"--batch_size=64 \(\+ 192 pseudo\) .* pass --micro_batches=4 ") as error:
        device_memory.check(config, 1, memory, model)
    # Under a GiB the sizes read in MiB, not as "0 GiB".
    assert f"more than its {memory / (1 << 20):.0f} MiB" in str(error.value)
    estimate = device_memory.check(TrainConfig(**{**config.__dict__, "micro_batches": 4}), 1, memory, model)
    assert estimate["images_per_micro_batch"] == 64 and estimate["bytes"] <= memory
    # Over 2 replicas each holds half: 2 passes of 64.
    with pytest.raises(ConfigError, match="pass --micro_batches=2 "):
        device_memory.check(config, 2, memory, model)


def test_replica_memory_comes_from_the_flag_or_the_tpu_accelerator_type(monkeypatch):
    assert device_memory.replica_memory_bytes(2.5) == int(2.5 * device_memory.GIB)
    assert device_memory.replica_memory_bytes(0, "v4-8") == 32 * device_memory.GIB
    assert device_memory.replica_memory_bytes(0, "v5litepod-8") == 16 * device_memory.GIB
    monkeypatch.setenv(device_memory.ACCELERATOR_TYPE_VARIABLE, "v3-8")
    assert device_memory.replica_memory_bytes(0) == 16 * device_memory.GIB
    monkeypatch.delenv(device_memory.ACCELERATOR_TYPE_VARIABLE)
    assert device_memory.replica_memory_bytes(0) is None


def test_out_of_device_memory_at_a_step_stops_the_run_naming_the_flags(data, tmp_path, monkeypatch):
    def exhausted(self, iterator, num_steps):
        raise tf.errors.ResourceExhaustedError(None, None, "Ran out of memory in memory space hbm.\nmore")

    monkeypatch.setattr(trainer_lib.Trainer, "train_block", exhausted)
    with pytest.raises(ConfigError, match=r"16 images per replica and pass .* raise --micro_batches .* hbm\.$"):
        train.run(TrainConfig(**small_flags(data["folder"], str(tmp_path / "oom"), pseudo=data["pseudo"])))

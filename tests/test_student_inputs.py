"""Mixed batches (exact labeled:pseudo composition) and the step-derived input position."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from student import inputs, pseudo, sources
from student.config import TrainConfig
from test_student_fixtures import write_image_folder, write_pseudo_labels


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    labeled = sources.open_source(write_image_folder(str(root / "images"), num_classes=3, per_class=3))
    pseudo_source = pseudo.open_pseudo(write_pseudo_labels(str(root / "pseudo"), num_examples=10), 3)
    config = TrainConfig(model="resnet_rs_tiny", labeled="images", model_dir="unused", pseudo="pseudo",
                         pseudo_ratio=3, batch_size=2, num_classes=3, shuffle_buffer=4, eval_batch_size=4)
    return inputs.InputBuilder(config, labeled, pseudo_source, eval_source=labeled)


def context(replicas=1, pipelines=1, pipeline=0):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                      num_replicas_in_sync=replicas)


def test_every_batch_holds_exactly_the_labeled_and_pseudo_counts(builder):
    # 9 labeled and 10 pseudo records: 8 steps cross several epochs of both streams.
    for batch in builder.train_dataset(context()).take(8):
        assert batch["labeled_images"].shape == (2, 32, 32, 3)
        assert batch["labels"].shape == (2,)
        assert batch["pseudo_images"].shape == (6, 32, 32, 3)
        assert batch["pseudo_targets"].shape == (6, 3)
        np.testing.assert_allclose(batch["pseudo_targets"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    element_spec = builder.train_dataset(context()).element_spec
    assert all(spec.shape.is_fully_defined() for spec in element_spec.values())  # static shapes


def test_each_replica_gets_its_share_of_both_parts(builder):
    batch = next(iter(builder.train_dataset(context(replicas=2))))
    assert batch["labeled_images"].shape[0] == 1 and batch["pseudo_images"].shape[0] == 3


def test_input_pipelines_of_a_multi_host_job_read_different_examples(builder):
    first, second = (next(iter(builder.train_dataset(context(replicas=2, pipelines=2, pipeline=index))))
                     for index in (0, 1))
    assert first["labeled_images"].shape[0] == 1 and first["pseudo_images"].shape[0] == 3
    assert not np.array_equal(first["pseudo_images"].numpy(), second["pseudo_images"].numpy())


def test_each_epoch_visits_every_labeled_record_once(builder):
    stream = inputs.example_stream(builder.labeled_source.share(), start_position=0,
                                   seed=tf.constant([0, 0], tf.int64), shuffle_buffer=4)
    positions, records = zip(*[(int(p), r["image"].numpy()) for p, r in stream.take(18)])
    assert positions == tuple(range(18))
    assert sorted(records[:9]) == sorted(records[9:]) and records[:9] != records[9:]


def test_a_stream_resumed_at_a_step_continues_the_uninterrupted_stream(builder):
    full = list(builder.train_dataset(context(), start_step=0).take(7))
    resumed = list(builder.train_dataset(context(), start_step=4).take(3))
    for expected, actual in zip(full[4:], resumed):
        for key in expected:
            np.testing.assert_array_equal(expected[key].numpy(), actual[key].numpy())


def test_reseeding_skips_nothing_and_starts_a_fresh_order(builder):
    reseeding = inputs.InputBuilder(dataclasses.replace(builder.config, resume_input="reseed"),
                                    builder.labeled_source, builder.pseudo_source)
    assert reseeding.start_position(start_step=4, examples_per_step=2) == 0
    fresh = next(iter(reseeding.train_dataset(context(), start_step=4)))
    continued = next(iter(builder.train_dataset(context(), start_step=4)))
    assert not np.array_equal(fresh["labeled_images"].numpy(), continued["labeled_images"].numpy())


def test_eval_batches_are_padded_and_masked_to_count_each_record_once(builder):
    for replicas in (1, 2):
        batches = list(builder.eval_dataset(context(replicas=replicas)))
        assert all(b["images"].shape == (4 // replicas, 32, 32, 3) for b in batches)
        assert len(batches) % replicas == 0
        assert sum(float(b["mask"].numpy().sum()) for b in batches) == 9


def test_images_cross_to_the_device_as_pixels_uint8_for_training_float32_for_eval(builder):
    # The trainer normalises them in its compiled step: a quarter of the bytes per training image.
    batch = next(iter(builder.train_dataset(context())))
    for key in ("labeled_images", "pseudo_images"):
        assert builder.train_dataset(context()).element_spec[key].dtype == tf.uint8
        assert batch[key].dtype == tf.uint8 and batch[key].numpy().max() > 1  # pixels, not [0, 1]
    eval_images = next(iter(builder.eval_dataset(context())))["images"].numpy()
    assert eval_images.dtype == np.float32
    assert eval_images.min() >= 0.0 and eval_images.max() <= 255.0 and eval_images.max() > 1.0  # not normalised

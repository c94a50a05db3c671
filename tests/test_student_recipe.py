"""The recipe's losses, soft targets, schedule and weight decay against hand computations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from student import pseudo, recipe
from student.config import TrainConfig


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_soft_label_loss_matches_a_hand_computation():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], np.float32)
    targets = np.array([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]], np.float32)
    # Cross-entropy against the teacher's distribution, summed and divided by the GLOBAL
    # pseudo batch (here 4: two replicas of two), so replica sums add up to the mean.
    expected = -(targets * log_softmax(logits)).sum() / 4
    assert float(recipe.pseudo_loss(targets, logits, global_batch_size=4)) == pytest.approx(expected, rel=1e-6)
    # By hand for the first row: -(0.7 * log p0 + 0.3 * log p1).
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    first = -(0.7 * np.log(p[0]) + 0.3 * np.log(p[1]))
    assert float(recipe.pseudo_loss(targets[:1], logits[:1], 1)) == pytest.approx(first, rel=1e-6)


def test_labeled_loss_uses_label_smoothing():
    logits = np.array([[2.0, 0.5, -1.0, 0.0]], np.float32)
    smoothed = np.full(4, 0.1 / 4)
    smoothed[1] += 0.9
    expected = -(smoothed * log_softmax(logits)[0]).sum() / 2
    value = recipe.labeled_loss(tf.constant([1]), logits, 4, 0.1, global_batch_size=2)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_soft_targets_keep_the_top_k_spread_the_tail_and_respect_renormalise_hard_and_full_distributions():
    record = {"top_k_indices": tf.constant([2, 0], tf.int64), "top_k_probabilities": tf.constant([0.6, 0.2])}
    # The tail's 0.2 is shared by the 2 classes outside the top 2.
    np.testing.assert_allclose(pseudo.soft_targets(record, 4), [0.2, 0.1, 0.6, 0.1], rtol=1e-6)
    np.testing.assert_allclose(pseudo.soft_targets(record, 4, tail="renormalise"), [0.25, 0.0, 0.75, 0.0],
                               rtol=1e-6)
    np.testing.assert_allclose(pseudo.soft_targets(record, 4, hard=True), [0, 0, 1, 0])
    record["distribution"] = tf.constant([0.1, 0.1, 0.6, 0.2])
    np.testing.assert_allclose(pseudo.soft_targets(record, 4), [0.1, 0.1, 0.6, 0.2], rtol=1e-6)


def test_uniform_tail_targets_when_k_is_every_class_or_the_top_k_sums_above_one():
    every = {"top_k_indices": tf.constant([1, 0, 2], tf.int64), "top_k_probabilities": tf.constant([0.5, 0.3, 0.2])}
    np.testing.assert_allclose(pseudo.soft_targets(every, 3), [0.3, 0.5, 0.2], rtol=1e-6)
    rounded = {"top_k_indices": tf.constant([0, 1], tf.int64),
               "top_k_probabilities": tf.constant([0.7000001, 0.3000001])}
    target = pseudo.soft_targets(rounded, 3).numpy()
    assert target[2] == 0.0 and target.sum() == pytest.approx(1.0, abs=1e-6)


def test_schedule_warms_up_linearly_then_decays_as_a_cosine():
    config = TrainConfig(model="resnet_rs_tiny", labeled="x", model_dir="y", batch_size=512, labeled_examples=5120,
                         epochs=10, warmup_epochs=2)  # 10 steps per epoch, 100 steps, 20 of warm-up
    schedule = recipe.learning_rate_schedule(config)
    peak = 0.1 * 512 / 256
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(10)) == pytest.approx(peak / 2)
    assert float(schedule(20)) == pytest.approx(peak)
    assert float(schedule(60)) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 40 / 80)), rel=1e-5)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_skips_batch_norm_only_and_matches_the_reference_l2_under_momentum():
    # The reference (tensorflow/tpu resnet_main.py) decays every trainable variable whose
    # name lacks "batch_normalization": kernels and biases, not BN's scale and offset.
    config = TrainConfig(model="resnet_rs_tiny", labeled="x", model_dir="y", batch_size=256, labeled_examples=256,
                         train_steps=10, warmup_epochs=0, ema_decay=0.0)
    assert recipe.decoupled_weight_decay(config) == pytest.approx(4e-5 / 0.1)
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = recipe.make_optimizer(config)
    model.layers[1].bias.assign([1.0, 1.0])
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    learning_rate = 0.1  # peak at batch 256, cosine at step 0
    decayed = set()
    for variable in model.trainable_variables:
        name = variable.path.split("/")[-1]
        if name in ("kernel", "bias"):
            np.testing.assert_allclose(variable.numpy(), before[variable.path] * (1 - learning_rate * 4e-4),
                                       rtol=1e-6)
            decayed.add(name)
        else:
            assert name in recipe.NO_WEIGHT_DECAY
            np.testing.assert_array_equal(variable.numpy(), before[variable.path])
    assert decayed == {"kernel", "bias"}


def test_momentum_is_nesterovs_as_in_the_reference():
    # tf.train.MomentumOptimizer(use_nesterov=True): accumulation a = m * a + g, then
    # w -= lr * (g + m * a). Keras' SGD(nesterov=True) with velocity v = m * v - lr * g and
    # w += m * v - lr * g is the same update for a constant learning rate (here it moves by
    # 2.5e-6 of itself between the two steps: far inside the tolerance).
    config = TrainConfig(model="resnet_rs_tiny", labeled="x", model_dir="y", batch_size=256, labeled_examples=256,
                         train_steps=1000, warmup_epochs=0, ema_decay=0.0, weight_decay=0.0)
    variable = tf.Variable([1.0, -2.0])
    optimizer = recipe.make_optimizer(config)
    gradients = [np.array([0.5, 0.25], np.float32), np.array([-1.0, 2.0], np.float32)]
    weights, accumulation = np.array([1.0, -2.0]), np.zeros(2)
    for step, gradient in enumerate(gradients):
        learning_rate = float(recipe.learning_rate_schedule(config)(step))
        accumulation = 0.9 * accumulation + gradient
        weights = weights - learning_rate * (gradient + 0.9 * accumulation)
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
    np.testing.assert_allclose(variable.numpy(), weights, rtol=1e-5)


def test_pseudo_loss_weighs_every_image_like_a_labeled_one_and_smooths_hard_labels():
    assert recipe.pseudo_weight(pseudo_ratio=3) == 3 and recipe.pseudo_weight(3, pseudo_loss_weight=0.5) == 1.5
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    hard = tf.one_hot([0, 2], 3)
    log_p = tf.nn.log_softmax(logits).numpy()
    smoothed = hard.numpy() * 0.9 + 0.1 / 3
    expected = -(smoothed * log_p).sum() / 4  # summed over the batch, divided by the global batch
    assert float(recipe.pseudo_loss(hard, logits, 4, label_smoothing=0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(recipe.pseudo_loss(hard, logits, 4)) == pytest.approx(-(hard.numpy() * log_p).sum() / 4, rel=1e-5)

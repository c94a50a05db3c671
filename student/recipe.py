"""The paper's optimisation recipe from Keras pieces: schedule, optimizer, losses.

Where Keras differs from the TPU reference, the mapping is explained next to the code:
weight decay (decoupled in Keras, an L2 loss term in the reference) and EMA (no
num_updates warm-up in Keras; trainable weights only).
"""

import keras
import tensorflow as tf

# Variables the reference leaves out of weight decay: BatchNorm's scale and offset only
# (tensorflow/tpu resnet_main.py: every trainable variable whose name lacks
# "batch_normalization", so biases are decayed). Matched against Keras variable names.
NO_WEIGHT_DECAY = ("gamma", "beta")


def learning_rate_schedule(config):
    """Linear warm-up from 0 to the peak, then cosine decay to 0 at the last step.

    keras.optimizers.schedules.CosineDecay does both: `warmup_target` is the peak and
    `decay_steps` counts the steps after warm-up, as in the reference.
    """
    total, warmup = config.total_steps(), config.warmup_steps()
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate, decay_steps=max(1, total - warmup),
        alpha=0.0, warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def decoupled_weight_decay(config):
    """Keras' per-step decay that matches the reference's L2 term under momentum.

    The reference adds weight_decay * sum(w^2) / 2 to the loss, so the decay gradient
    weight_decay * w passes through momentum and, at steady state, moves w by
    learning_rate * weight_decay / (1 - momentum) * w per step. Keras' `weight_decay`
    is decoupled (w -= learning_rate * weight_decay * w, outside momentum), so the
    paper's 4e-5 becomes 4e-5 / (1 - 0.9) = 4e-4 here.
    """
    return config.weight_decay / (1.0 - config.momentum) if config.weight_decay else None


def make_optimizer(config):
    """SGD with Nesterov momentum (as the reference's MomentumOptimizer(use_nesterov=True)),
    decoupled weight decay (not on BatchNorm) and an EMA of the weights.

    EMA: Keras keeps `ema = ema * m + w * (1 - m)` for trainable variables, starting at
    the first step's weights. The reference's tf.train.ExponentialMovingAverage uses
    min(decay, (1 + step) / (10 + step)) early on and also averages the BatchNorm
    statistics; here the statistics are a moving average of their own (BN momentum 0.9,
    see models/configs.py), and with decay 0.9999 the first weights stop mattering after
    a few ten thousand steps (of ~110k in a 350-epoch ImageNet run at batch 4096).
    """
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate_schedule(config), momentum=config.momentum, nesterov=True,
        weight_decay=decoupled_weight_decay(config), use_ema=config.ema_decay > 0,
        ema_momentum=config.ema_decay or 0.99, ema_overwrite_frequency=None)
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer


def labeled_loss(labels, logits, num_classes, label_smoothing, global_batch_size):
    """Summed cross-entropy with label smoothing, divided by the GLOBAL labeled batch.

    Dividing by the global batch makes the sum over replicas the mean over the batch.
    Smoothing as keras.losses.categorical_crossentropy (and the reference): the target
    is one_hot * (1 - s) + s / num_classes.
    """
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    per_example = keras.losses.categorical_crossentropy(targets, tf.cast(logits, tf.float32), from_logits=True,
                                                        label_smoothing=label_smoothing)
    return tf.reduce_sum(per_example) / global_batch_size


def pseudo_loss(targets, logits, global_batch_size, label_smoothing=0.0):
    """Summed cross-entropy against the teacher's targets, over the GLOBAL pseudo batch.

    Noisy Student smooths hard (one-hot) pseudo-labels like labeled ones and leaves soft
    targets as the teacher gave them: the caller passes `label_smoothing` only for hard ones.
    """
    per_example = keras.losses.categorical_crossentropy(targets, tf.cast(logits, tf.float32), from_logits=True,
                                                        label_smoothing=label_smoothing)
    return tf.reduce_sum(per_example) / global_batch_size


def pseudo_weight(pseudo_ratio, pseudo_loss_weight=1.0):
    """The pseudo mean's weight in `labeled_mean + weight * pseudo_mean`.

    Noisy Student's total is labeled_mean + unlabel_ratio * unlabeled_mean: every image,
    labeled or pseudo-labeled, weighs the same in the step. `pseudo_loss_weight` multiplies that.
    """
    return pseudo_loss_weight * pseudo_ratio

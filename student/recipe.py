"""The paper's optimisation recipe from Keras pieces: schedule, optimizer, EMA, losses.

Where Keras differs from the TPU reference, the mapping is explained next to the code:
weight decay (decoupled in Keras, an L2 loss term in the reference). The EMA is the
reference's (tf.train.ExponentialMovingAverage with num_updates over the trainable
weights and the BatchNorm moving statistics, BN momentum 0): `WeightAverage`.
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
    `decay_steps` counts the steps after warm-up. Cosine is the paper's schedule; the
    released reference (tensorflow/tpu resnet_main.py) decays in steps instead.
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
    """SGD with Nesterov momentum (as the reference's MomentumOptimizer(use_nesterov=True))
    and decoupled weight decay (not on BatchNorm).

    Keras' own optimizer EMA (`use_ema`) stays off: it averages trainable weights only and
    has no num_updates warm-up, so the reference's EMA is `WeightAverage`, which the
    trainer updates after every optimizer step.
    """
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate_schedule(config), momentum=config.momentum, nesterov=True,
        weight_decay=decoupled_weight_decay(config), use_ema=False)
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer


def averaged_variables(model):
    """What the reference's get_ema_vars averages: the trainable variables and every
    BatchNorm moving mean and variance (matched by name, as the reference does)."""
    statistics = [variable for variable in model.non_trainable_variables
                  if variable.name in ("moving_mean", "moving_variance")]
    return [variable for variable in model.trainable_variables + statistics if variable.dtype.startswith("float")]


class WeightAverage(tf.Module):
    """tf.train.ExponentialMovingAverage(decay, num_updates=step) as the reference applies it.

    After each optimizer step, every averaged variable's shadow moves as
    `shadow -= (shadow - value) * (1 - d)` with d = min(decay, (1 + n) / (10 + n)) and n
    the optimizer's step count after the update (the reference's ema.apply runs after
    minimize incremented global_step). Shadows start at the variables' initial values.

    Why not tf.train.ExponentialMovingAverage itself: in replica context its apply goes
    through assign_moving_average's merge_call, which MEAN-reduces every averaged variable
    across replicas each step (a second all-reduce of the whole model, one merge_call per
    variable), and in cross-replica context its apply fails on MirroredVariables
    (TypeError in TF 2.21). Here each replica updates its own copy of a shadow from its
    own copy of the variable, with no communication: the trainable weights are the same
    on every replica, so their shadows are too; BatchNorm statistics are per replica
    (as the moving statistics themselves), and a checkpoint holds the first replica's.
    Create it under the strategy's scope; call `update` in replica context.
    """

    def __init__(self, variables, decay, step):
        super().__init__(name="weight_average")
        self.decay = float(decay)
        self._step = step
        self.sources = list(variables)
        # aggregation NONE: an assign in replica context writes that replica's copy only.
        self.shadows = [tf.Variable(variable.value.read_value(), trainable=False, name=variable.name + "_average",
                                    aggregation=tf.VariableAggregation.NONE) for variable in self.sources]

    def current_decay(self):
        n = tf.cast(self._step, tf.float32)
        return tf.minimum(self.decay, (1.0 + n) / (10.0 + n))

    def update(self):
        rate = 1.0 - self.current_decay()
        for shadow, variable in zip(self.shadows, self.sources):
            shadow.assign_sub((shadow - variable.value) * tf.cast(rate, shadow.dtype))

    def swap_in(self, strategy):
        """Loads every replica's shadows into its copies of the variables (cross-replica context)."""
        for variable, shadow in zip(self.sources, self.shadows):
            strategy.extended.update(variable.value, lambda copy, average: copy.assign(average), args=(shadow,))


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

"""ResNet-RS (Bello et al., 2021) in Keras 3, following the TPU reference implementation.

Reference: tensorflow/tpu models/official/resnet/resnet_model.py with the ResNet-RS
settings (use_resnetd_stem, replace_stem_max_pool, resnetd_shortcut, se_ratio=0.25).

By default the model is a functional graph of stock Keras layers only. Stochastic depth is a
`Dropout` whose noise is shared over height, width and channels (one draw per image),
which is exactly the reference's `drop_connect`; so a saved `.keras` file loads with
`keras.saving.load_model` in a process that never imports this package. A trainer under a
distribution strategy asks for `replica_noise=True` instead: `models.noise.ReplicaDropout`,
a `Dropout` that draws a different mask on every replica (the exported model keeps the
stock layer; the two behave the same outside training).

Input: float images of shape (batch, height, width, 3), already normalised
(`models.preprocessing.normalize`). Output: float32 logits (no softmax), so callers
choose the temperature.
"""

import sys

import keras

from models import configs, noise

# tf.variance_scaling_initializer() defaults (scale 1, fan-in, truncated normal), as in
# the reference's conv2d_fixed_padding and squeeze_excitation.
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}}
_DENSE_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.01}}
_BOTTLENECK_EXPANSION = 4


class _Builder:
    """Adds named layers for one model, with one BN setting and one dtype policy."""

    def __init__(self, cfg, dtype_policy, replica_noise):
        self.cfg = cfg
        self.dtype = dtype_policy
        self.dropout_layer = noise.ReplicaDropout if replica_noise else keras.layers.Dropout

    def conv(self, x, filters, kernel_size, strides, name):
        # The reference pads explicitly for strided convs ("fixed padding") so padding
        # does not depend on input size; Keras 'same' pads (0, 1) for even inputs instead
        # of (1, 1), which would shift every strided conv by one pixel.
        if strides > 1 and kernel_size > 1:
            pad_begin = (kernel_size - 1) // 2
            pad_end = kernel_size - 1 - pad_begin
            x = keras.layers.ZeroPadding2D(((pad_begin, pad_end), (pad_begin, pad_end)),
                                           name=name + "_pad", dtype=self.dtype)(x)
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides,
            padding="same" if strides == 1 else "valid", use_bias=False,
            kernel_initializer=_CONV_INIT, name=name, dtype=self.dtype)(x)

    def batch_norm(self, x, name, relu=True, zero_init=False):
        x = keras.layers.BatchNormalization(
            momentum=self.cfg.bn_momentum, epsilon=self.cfg.bn_epsilon,
            gamma_initializer="zeros" if zero_init else "ones", name=name,
            dtype=self.dtype)(x)
        if relu:
            x = keras.layers.ReLU(name=name + "_relu", dtype=self.dtype)(x)
        return x

    def squeeze_excite(self, x, filters, name):
        reduced = max(1, int(filters * self.cfg.se_ratio))
        s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + "_squeeze",
                                                dtype=self.dtype)(x)
        s = keras.layers.Conv2D(reduced, 1, activation="relu", kernel_initializer=_CONV_INIT,
                                name=name + "_reduce", dtype=self.dtype)(s)
        s = keras.layers.Conv2D(filters, 1, activation="sigmoid", kernel_initializer=_CONV_INIT,
                                name=name + "_expand", dtype=self.dtype)(s)
        return keras.layers.Multiply(name=name + "_excite", dtype=self.dtype)([x, s])

    def stem(self, x):
        # ResNet-D stem: three 3x3 convs instead of one 7x7, and the paper's stem
        # modification: a stride-2 3x3 conv in place of the 3x3 max-pool.
        f1, f2, f3 = self.cfg.stem_filters
        for i, (filters, strides) in enumerate([(f1, 2), (f2, 1), (f3, 1), (f3, 2)], 1):
            x = self.conv(x, filters, 3, strides, name=f"stem_conv{i}")
            x = self.batch_norm(x, name=f"stem_bn{i}")
        return x

    def bottleneck(self, x, filters, strides, project, drop_rate, name):
        out_filters = filters * _BOTTLENECK_EXPANSION
        shortcut = x
        if project:
            if strides == 2:
                # ResNet-D shortcut: average-pool, then a stride-1 1x1 conv, so the
                # projection sees every input pixel rather than one in four.
                shortcut = keras.layers.AveragePooling2D(2, 2, padding="same", name=name + "_shortcut_pool",
                                                         dtype=self.dtype)(shortcut)
                shortcut = self.conv(shortcut, out_filters, 1, 1, name=name + "_shortcut_conv")
            else:
                shortcut = self.conv(shortcut, out_filters, 1, strides, name=name + "_shortcut_conv")
            shortcut = self.batch_norm(shortcut, name=name + "_shortcut_bn", relu=False)

        x = self.conv(x, filters, 1, 1, name=name + "_conv1")
        x = self.batch_norm(x, name=name + "_bn1")
        x = self.conv(x, filters, 3, strides, name=name + "_conv2")
        x = self.batch_norm(x, name=name + "_bn2")
        x = self.conv(x, out_filters, 1, 1, name=name + "_conv3")
        # Zero-initialised gamma: every residual block starts as the identity.
        x = self.batch_norm(x, name=name + "_bn3", relu=False, zero_init=True)
        if self.cfg.se_ratio:
            x = self.squeeze_excite(x, out_filters, name=name + "_se")
        if drop_rate:
            # One keep/drop draw per image, scaled by 1/keep: the reference's drop_connect.
            x = self.dropout_layer(drop_rate, noise_shape=(None, 1, 1, 1),
                                   name=name + "_stochastic_depth", dtype=self.dtype)(x)
        x = keras.layers.Add(name=name + "_add", dtype=self.dtype)([x, shortcut])
        return keras.layers.ReLU(name=name + "_out", dtype=self.dtype)(x)


def stochastic_depth_rates(cfg):
    """Drop rate of each stage: the base rate scaled linearly with the stage's position.

    The reference scales per stage, not per block: stage i (0-based) of 4 gets
    rate * (i + 2) / 5, so the deepest stage drops at the full rate.
    """
    num_stages = len(cfg.block_counts)
    return [cfg.stochastic_depth_rate * (i + 2) / (num_stages + 1) for i in range(num_stages)]


def allow_deep_graphs(num_blocks):
    """Raises Python's recursion limit enough for Keras to walk a graph this deep.

    Keras' functional graph construction and deserialisation recurse once per layer
    (about 18 per bottleneck); resnet_rs_420 has 139 blocks, beyond the default 1000.
    Loading a saved deep model in another process needs the same call first.
    """
    needed = 2000 + 60 * num_blocks
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def build(cfg, num_classes=1000, image_size=None, dtype_policy=None, replica_noise=False):
    """Builds the Keras model for a `ModelConfig`.

    Args:
      cfg: a `models.configs.ModelConfig`.
      num_classes: width of the classifier.
      image_size: fixes the spatial input size; None accepts any size.
      dtype_policy: e.g. "mixed_bfloat16" (bfloat16 compute, float32 variables);
        None uses the global Keras policy. Logits are always float32.
      replica_noise: dropout and stochastic depth draw a different mask on every replica
        of a distribution strategy (`models.noise.ReplicaDropout`); False keeps stock Keras
        layers, which draw the same mask on every replica, so that a saved file needs
        only Keras. Replica 0 and a model outside any strategy draw the same either way.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    allow_deep_graphs(sum(cfg.block_counts))
    dtype = keras.DTypePolicy(dtype_policy) if dtype_policy else None
    builder = _Builder(cfg, dtype, replica_noise)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = builder.stem(inputs)
    for stage, (blocks, filters, drop_rate) in enumerate(
            zip(cfg.block_counts, cfg.stage_filters, stochastic_depth_rates(cfg)), 1):
        for block in range(blocks):
            x = builder.bottleneck(
                x, filters, strides=2 if (block == 0 and stage > 1) else 1,
                project=block == 0, drop_rate=drop_rate, name=f"stage{stage}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=dtype)(x)
    if cfg.dropout_rate:
        x = builder.dropout_layer(cfg.dropout_rate, name="top_dropout", dtype=dtype)(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=_DENSE_INIT, name="logits",
                                dtype="float32")(x)
    return keras.Model(inputs, logits, name=cfg.name)


def create(name, num_classes=1000, *, image_size=None, dtype_policy=None, replica_noise=False, **overrides):
    """A ResNet-RS model by name, e.g. `create("resnet_rs_50")`.

    `overrides` replace fields of `models.config(name)` (e.g. `dropout_rate=0.0`,
    `bn_momentum=0.0`); `image_size`, `dtype_policy` and `replica_noise` are as in `build`.
    """
    return build(configs.config(name, **overrides), num_classes, image_size, dtype_policy, replica_noise)

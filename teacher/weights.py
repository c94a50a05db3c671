"""Import published ResNet-RS ImageNet weights into `models.create(...)`.

Three layouts are understood, chosen by the path:
  *.keras, *.weights.h5   this project's own Keras 3 files (Model.load_weights);
  *.h5                    Keras-applications weights (tf_keras `ResNetRS*`, the
                          published resnet-rs-*-i*.h5 files), matched layer by layer;
  a checkpoint prefix     the TPU reference's TF1 checkpoints (resnet-rs-*-i*.tar.gz,
                          unpacked), whose variables are named by creation order
                          (conv2d_N, batch_normalization_N, dense); the
                          ExponentialMovingAverage copies are used when present, as the
                          reference does at evaluation.
Every weight of the model must be found with the right shape, or the import fails
naming the first one that is not.
"""

import os
import re
import tempfile

import h5py
import numpy as np
import tensorflow as tf

from teacher.metadata import TeacherError

_EMA_SUFFIX = "/ExponentialMovingAverage"


def load_published_weights(model, path):
    """Fills `model` (from `models.create`) with the weights stored at `path`."""
    if path.endswith((".keras", ".weights.h5")):
        model.load_weights(path)
    elif path.endswith(".h5"):
        _load_keras_applications_h5(model, path)
    elif tf.io.gfile.exists(path + ".index"):
        _load_tpu_reference_checkpoint(model, path)
    else:
        raise TeacherError(f"--weights={path}: expected a .keras, .weights.h5 or Keras-applications .h5 "
                           "file, or a TF checkpoint prefix (PREFIX.index must exist).")


def keras_applications_name(name):
    """Our layer name -> the tf_keras `ResNetRS*` layer name holding the same weights."""
    if name == "logits":
        return "predictions"
    stem = re.fullmatch(r"stem_(conv|bn)(\d)", name)
    if stem:
        kind = "conv" if stem[1] == "conv" else "batch_norm"
        return f"stem_stem_{kind}_{stem[2]}"
    block = re.fullmatch(r"stage(\d)_block(\d+)_(\w+)", name)
    if not block:
        raise TeacherError(f"no Keras-applications counterpart for layer {name!r}")
    prefix = f"BlockGroup{int(block[1]) + 1}__block_{int(block[2]) - 1}_"
    part = {"conv1": "_conv_1", "conv2": "_conv_2", "conv3": "_conv_3",
            # tf_keras names the first BN of a block with one underscore, the others with two.
            "bn1": "batch_norm_1", "bn2": "_batch_norm_2", "bn3": "_batch_norm_3",
            "se_reduce": "_se_se_reduce", "se_expand": "_se_se_expand",
            "shortcut_conv": "_projection_conv", "shortcut_bn": "_projection_batch_norm"}[block[3]]
    return prefix + part


def _local_copy(path, directory):
    if os.path.exists(path):
        return path
    local = os.path.join(directory, os.path.basename(path))
    tf.io.gfile.copy(path, local)
    return local


def _read_h5_layers(path):
    """{layer name with counters removed: [arrays in saved order]} from a Keras 2 .h5 file."""
    with tempfile.TemporaryDirectory() as directory, h5py.File(_local_copy(path, directory), "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        layers = {}
        for layer_name in root.attrs["layer_names"]:
            layer_name = layer_name.decode() if isinstance(layer_name, bytes) else layer_name
            group = root[layer_name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            if names:
                # tf_keras numbers the stem per session ("stem_1_stem_conv_1"); drop the counter.
                key = re.sub(r"^stem_\d+_", "stem_", layer_name)
                layers[key] = [np.asarray(group[n]) for n in names]
        return layers


def _assign(model, layer_name, arrays, source):
    layer = model.get_layer(layer_name)
    if len(arrays) != len(layer.weights):
        raise TeacherError(f"{source}: layer {layer_name!r} has {len(layer.weights)} weights, "
                           f"file has {len(arrays)}.")
    for weight, value in zip(layer.weights, arrays):
        if tuple(weight.shape) != value.shape:
            raise TeacherError(f"{source}: {weight.path} has shape {tuple(weight.shape)}, file has "
                               f"{value.shape}. Is it the same depth and number of classes?")
        weight.assign(value)


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _load_keras_applications_h5(model, path):
    stored = _read_h5_layers(path)
    for layer in _weighted_layers(model):
        key = keras_applications_name(layer.name)
        if key not in stored:
            raise TeacherError(f"{path}: no weights for layer {key!r} (ours: {layer.name!r}); is this "
                               "a ResNet-RS Keras-applications file of the same depth?")
        _assign(model, layer.name, stored[key], path)


def reference_creation_order(model):
    """Our weighted layers in the order the TPU reference creates its tf.layers.

    Stem convs/BNs; per block the projection conv + BN (first block of a stage), then
    conv1, bn1, conv2, bn2, conv3, bn3, SE reduce, SE expand; then the classifier.
    """
    names = [layer.name for layer in _weighted_layers(model)]

    def block_key(name):
        match = re.fullmatch(r"stage(\d)_block(\d+)_(\w+)", name)
        parts = ["shortcut_conv", "shortcut_bn", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                 "se_reduce", "se_expand"]
        return (1, int(match[1]), int(match[2]), parts.index(match[3]))

    def key(name):
        if name.startswith("stem_"):
            return (0, int(name[-1]), 0, 0 if "conv" in name else 1)
        if name == "logits":
            return (2, 0, 0, 0)
        return block_key(name)

    return sorted(names, key=key)


def tpu_reference_variable_names(model):
    """{our layer name: [TF1 variable names, in Keras weight order]}."""
    counters = {"conv2d": 0, "batch_normalization": 0, "dense": 0}
    mapping = {}
    for name in reference_creation_order(model):
        layer_weights = len(model.get_layer(name).weights)
        if name == "logits":
            base, suffixes = "dense", ["kernel", "bias"]
        elif "bn" in name:
            base, suffixes = "batch_normalization", ["gamma", "beta", "moving_mean", "moving_variance"]
        else:
            base, suffixes = "conv2d", ["kernel", "bias"][:layer_weights]
        scope = base if counters[base] == 0 else f"{base}_{counters[base]}"
        counters[base] += 1
        mapping[name] = [f"{scope}/{suffix}" for suffix in suffixes]
    return mapping


def _load_tpu_reference_checkpoint(model, prefix):
    reader = tf.train.load_checkpoint(prefix)
    available = reader.get_variable_to_shape_map()
    for layer_name, variables in tpu_reference_variable_names(model).items():
        arrays = []
        for variable in variables:
            stored = next((v for v in (variable + _EMA_SUFFIX, variable) if v in available), None)
            if stored is None:
                raise TeacherError(f"{prefix}: variable {variable!r} (for layer {layer_name!r}) is not in "
                                   "the checkpoint; is it a ResNet-RS checkpoint of the same depth?")
            arrays.append(reader.get_tensor(stored))
        _assign(model, layer_name, arrays, prefix)


"""Per-replica dropout and stochastic depth under MirroredStrategy over 2 logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the checks run in a fresh
process, which prints its findings as JSON for the assertions here.
"""

import json
import subprocess
import sys

from test_student_fixtures import REPOSITORY

SCRIPT = r"""
import json, os, tempfile
import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import models
from models import noise
from student import trainer as trainer_lib

IMAGES = 64  # drop decisions per stochastic-depth layer per replica
# Rates 0.5 everywhere: stochastic depth 0.2, 0.3, 0.4, 0.5 over the four stages.
OVERRIDES = dict(dropout_rate=0.5, stochastic_depth_rate=0.5)
strategy = trainer_lib.make_strategy("mirrored")


def make(seed, replica_noise=True, within=strategy):
    keras.utils.set_random_seed(seed)
    with within.scope():
        return models.create("resnet_rs_tiny", num_classes=5, replica_noise=replica_noise, **OVERRIDES)


def noise_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


def masks_fn(model):
    # Each layer's mask: the layer applied to ones (stochastic depth: one value per image).
    def masks():
        return [layer(tf.ones([IMAGES, 1, 1, 1] if "stochastic" in layer.name else [IMAGES, 32]), training=True)
                for layer in noise_layers(model)]
    return masks


def replica_masks(model):
    per_replica = tf.function(lambda: strategy.run(masks_fn(model)))()
    return [[m.numpy() for m in strategy.experimental_local_results(layer)] for layer in per_replica]


def single_masks(model):
    return [m.numpy() for m in tf.function(masks_fn(model))()]


report = {}
model = make(7)
report["classes"] = sorted({type(layer).__name__ for layer in noise_layers(model)})
report["names"] = [layer.name for layer in noise_layers(model)]
first = replica_masks(model)
report["values"] = sorted({float(v) for layer in first for replica in layer for v in np.unique(replica)})
report["differ"] = [not np.array_equal(r0, r1) for r0, r1 in first]
report["dropped"] = [[float(np.mean(r == 0)) for r in layer] for layer in first]
# The seed state is still one mirrored value: equal on both replicas after the draws.
report["states_in_sync"] = all(np.array_equal(*[v.numpy() for v in strategy.experimental_local_results(state.value)])
                               for state in noise.seed_states(model))
report["states"] = len(noise.seed_states(model))

# Same seed, fresh model: the same masks on each replica; another seed: other masks.
report["reproducible"] = all(np.array_equal(a[r], b[r]) for a, b in zip(first, replica_masks(make(7))) for r in (0, 1))
report["other_seed_differs"] = all(not np.array_equal(a[0], b[0]) for a, b in zip(first, replica_masks(make(8))))

# One device, no strategy: stock Keras Dropout and ReplicaDropout both draw replica 0's masks.
no_strategy = tf.distribute.get_strategy()  # the default strategy: one device
stock, replica = single_masks(make(7, False, no_strategy)), single_masks(make(7, True, no_strategy))
report["single_is_replica_0"] = all(np.array_equal(s, layer[0]) for s, layer in zip(stock, first))
report["replica_layer_is_stock"] = all(np.array_equal(s, r) for s, r in zip(stock, replica))

# Exact resume: a checkpoint as the trainer writes (model + seed states) taken after the first
# draw restores into a model built from another seed, whose next masks are the original's.
checkpoint_dir = tempfile.mkdtemp()
path = tf.train.Checkpoint(model=model, seed_states=noise.seed_states(model)).save(checkpoint_dir + "/ckpt")
continued = replica_masks(model)
restored_model = make(8)
tf.train.Checkpoint(model=restored_model, seed_states=noise.seed_states(restored_model)).restore(
    path).assert_existing_objects_matched()
resumed = replica_masks(restored_model)
report["resumed_equal"] = all(np.array_equal(a[r], b[r]) for a, b in zip(continued, resumed) for r in (0, 1))
report["continued_differs_from_first"] = all(not np.array_equal(a[0], b[0]) for a, b in zip(first, continued))

# The whole model as the trainer runs it (an XLA-compiled call inside a replica function given
# to strategy.run, as Trainer._replica_step), both replicas fed the same images: training
# logits differ between replicas, inference ones do not.
images = tf.constant(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), tf.float32)
for training in (True, False):
    forward = tf.function(lambda x: model(x, training=training), jit_compile=True)
    logits = [v.numpy() for v in strategy.experimental_local_results(
        tf.function(lambda: strategy.run(lambda x: forward(x), args=(images,)))())]
    report[f"logits_max_difference_training_{training}"] = float(np.max(np.abs(logits[0] - logits[1])))
print("RESULT " + json.dumps(report))
"""


def test_each_replica_draws_its_own_masks_reproducibly_and_resumes_exactly():
    process = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPOSITORY, capture_output=True, text=True,
                             timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(process.stdout.split("RESULT ", 1)[1])
    assert result["classes"] == ["ReplicaDropout"]
    assert result["names"][-1] == "top_dropout" and len(result["names"]) == 5  # 4 blocks of stochastic depth
    # Masks are 0 or 1 / keep, with keep 0.5, 0.6, 0.7 or 0.8: each layer's own rate.
    assert all(v == 0 or any(abs(v - 1 / keep) < 1e-6 for keep in (0.5, 0.6, 0.7, 0.8)) for v in result["values"])
    assert result["differ"] == [True] * 5
    # 64 draws (top dropout: 2048) at rates 0.2-0.5: every replica drops some and keeps some.
    assert all(0 < dropped < 1 for layer in result["dropped"] for dropped in layer)
    assert result["states_in_sync"] and result["states"] == 5
    assert result["reproducible"] and result["other_seed_differs"]
    assert result["single_is_replica_0"] and result["replica_layer_is_stock"]
    assert result["resumed_equal"] and result["continued_differs_from_first"]
    # Top dropout at 0.5 on the same features changes the logits far beyond float noise (1e-3);
    # inference is the same computation on both replicas, bit-equal.
    assert result["logits_max_difference_training_True"] > 1e-3
    assert result["logits_max_difference_training_False"] == 0.0

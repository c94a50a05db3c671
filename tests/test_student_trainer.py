"""The trainer under MirroredStrategy over 2 logical CPU devices (a fresh process sets them up)."""

import json
import subprocess
import sys

from test_student_fixtures import REPOSITORY

SCRIPT = r"""
import json, os, sys, tempfile
import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
from test_student_fixtures import small_flags, write_image_folder, write_pseudo_labels
from student import inputs, pseudo, sources, train
from student import trainer as trainer_lib
from student.config import TrainConfig

work = tempfile.mkdtemp()
folder = write_image_folder(os.path.join(work, "images"), num_classes=3, per_class=4)
pseudo_glob = write_pseudo_labels(os.path.join(work, "labels"), num_classes=3, num_examples=12)
config = TrainConfig(**small_flags(folder, os.path.join(work, "run"), pseudo=pseudo_glob, eval=folder,
                                   strategy="mirrored", eval_batch_size=8))
result = train.run(config)

strategy = trainer_lib.make_strategy("mirrored")
builder = inputs.InputBuilder(config, sources.open_source(folder), pseudo.open_pseudo(pseudo_glob, 3),
                              eval_source=sources.open_source(folder, flag="eval"))
trainer = trainer_lib.Trainer(config, strategy, builder)
iterator = iter(strategy.distribute_datasets_from_function(builder.train_dataset))
batch = next(iterator)
shares = [(int(labeled.shape[0]), int(pseudo_part.shape[0])) for labeled, pseudo_part in
          zip(strategy.experimental_local_results(batch["labeled_images"]),
              strategy.experimental_local_results(batch["pseudo_images"]))]
average = trainer.average
names = [variable.path for variable in average.sources]

def replica_values(variables):
    return [[np.array(v.numpy()) for v in strategy.experimental_local_results(
                variable.value if isinstance(variable, keras.Variable) else variable)]
            for variable in variables]

# The reference's EMA by hand, replica by replica, from each step's values: shadows start at
# the initial values; after step n, shadow -= (shadow - value) * (1 - min(decay, (1 + n) / (10 + n))).
by_hand = replica_values(average.sources)
losses = []
for n in (1, 2):
    losses.append(trainer.train_block(iterator, 1)[:2])
    rate = 1 - min(config.ema_decay, (1 + n) / (10 + n))
    by_hand = [[shadow - (shadow - value) * rate for shadow, value in zip(shadows, values)]
               for shadows, values in zip(by_hand, replica_values(average.sources))]
averaged = replica_values(average.shadows)
ema_error = max(float(np.max(np.abs(got - want) / (np.abs(want) + 1e-6))) for gots, wants in zip(averaged, by_hand)
                for got, want in zip(gots, wants))
labeled_loss, pseudo_loss = np.mean(losses, axis=0).tolist()
in_sync = all(np.array_equal(*[v.numpy() for v in strategy.experimental_local_results(variable.value)])
              for variable in trainer.model.trainable_variables)
statistics_differ = any(not np.array_equal(*values) for name, values in zip(names, by_hand) if "moving_mean" in name)

eval_data = lambda: strategy.distribute_datasets_from_function(builder.eval_dataset)
training_values = replica_values(average.sources)
with_ema = trainer.evaluate(eval_data(), use_ema=True)
restored = all(np.array_equal(a, b) for before, after in zip(training_values, replica_values(average.sources))
               for a, b in zip(before, after))
without_ema = trainer.evaluate(eval_data(), use_ema=False)

def load_by_hand(keep):  # each replica's shadows into its copies of the variables whose path passes `keep`
    for variable, shadow in zip(average.sources, average.shadows):
        if keep(variable.path):
            for copy, value in zip(strategy.experimental_local_results(variable.value),
                                   strategy.experimental_local_results(shadow)):
                copy.assign(value)

load_by_hand(lambda path: "moving_" not in path)
weights_only = trainer.evaluate(eval_data(), use_ema=False)
load_by_hand(lambda path: "moving_" in path)
ema_by_hand = trainer.evaluate(eval_data(), use_ema=False)
bn_momenta = {layer.momentum for layer in trainer.model.layers if isinstance(layer, keras.layers.BatchNormalization)}
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "step": result["step"],
                              "examples": result["eval"]["examples"], "shares": shares, "in_sync": in_sync,
                              "losses": [labeled_loss, pseudo_loss], "trainer_step": trainer.step,
                              "restored": restored, "with_ema": with_ema, "without_ema": without_ema,
                              "ema_by_hand": ema_by_hand, "weights_only": weights_only, "ema_error": ema_error,
                              "names": names, "statistics_differ": statistics_differ,
                              "bn_momenta": sorted(bn_momenta), "use_keras_ema": trainer.optimizer.use_ema}))
"""


def test_mirrored_strategy_over_two_logical_cpu_devices():
    process = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPOSITORY, capture_output=True, text=True,
                             timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(process.stdout.split("RESULT ", 1)[1])
    assert result["replicas"] == 2 and result["step"] == 4 and result["trainer_step"] == 2
    assert result["examples"] == 12  # 12 eval images in padded batches of 4 per replica, each counted once
    assert result["shares"] == [[2, 6], [2, 6]]  # batch 4 labeled + 12 pseudo, split evenly per replica
    assert result["in_sync"] and all(loss > 0 for loss in result["losses"])
    # The reference's EMA: trainable weights and every BatchNorm moving mean and variance (no
    # seed states), with BN momentum 0 so the statistics averaged are each step's batch statistics.
    names = result["names"]
    assert any(name.endswith("kernel") for name in names) and not any("seed" in name for name in names)
    assert sum(name.endswith("moving_mean") for name in names) == sum(name.endswith("moving_variance")
                                                                     for name in names) > 0
    assert result["bn_momenta"] == [0.0] and not result["use_keras_ema"]
    # After 2 steps every shadow on every replica is the by-hand EMA with the warm-up
    # min(decay, (1 + n) / (10 + n)) (float32 against float64 arithmetic: relative 1e-5).
    assert result["ema_error"] <= 1e-5
    assert result["statistics_differ"]  # each replica averages its own batch statistics
    # The EMA swap for evaluation happens on the devices and puts every replica's training
    # values back exactly; what it evaluates is the EMA of the weights AND of the BatchNorm
    # statistics (both loaded by hand: same metrics, to 1e-5; the weights alone give others).
    assert result["restored"]
    assert result["with_ema"]["examples"] == result["ema_by_hand"]["examples"] == 12
    for metric in ("top_1", "top_5", "loss"):
        assert abs(result["with_ema"][metric] - result["ema_by_hand"][metric]) <= 1e-5
    assert abs(result["with_ema"]["loss"] - result["weights_only"]["loss"]) > 1e-4
    assert result["with_ema"]["loss"] != result["without_ema"]["loss"]  # two steps move the EMA off the weights

"""The trainer under MirroredStrategy over 2 logical CPU devices (a fresh process sets them up)."""

import json
import subprocess
import sys

from test_student_fixtures import REPOSITORY

SCRIPT = r"""
import json, os, sys, tempfile
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
labeled_loss, pseudo_loss, _ = trainer.train_block(iterator, 2)
in_sync = all(np.array_equal(*[v.numpy() for v in strategy.experimental_local_results(variable.value)])
              for variable in trainer.model.trainable_variables)

def replica_values():
    return [[v.numpy() for v in strategy.experimental_local_results(variable.value)]
            for variable in trainer.model.trainable_variables]

eval_data = lambda: strategy.distribute_datasets_from_function(builder.eval_dataset)
training_values = replica_values()
with_ema = trainer.evaluate(eval_data(), use_ema=True)
restored = all(np.array_equal(a, b) for before, after in zip(training_values, replica_values())
               for a, b in zip(before, after))
without_ema = trainer.evaluate(eval_data(), use_ema=False)
trainer.optimizer.finalize_variable_values(trainer.model.trainable_variables)  # the EMA, loaded by hand
ema_by_hand = trainer.evaluate(eval_data(), use_ema=False)
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "step": result["step"],
                              "examples": result["eval"]["examples"], "shares": shares, "in_sync": in_sync,
                              "losses": [labeled_loss, pseudo_loss], "trainer_step": trainer.step,
                              "restored": restored, "with_ema": with_ema, "without_ema": without_ema,
                              "ema_by_hand": ema_by_hand}))
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
    # The EMA swap for evaluation happens on the devices and puts every replica's training
    # values back exactly; what it evaluates is the EMA (loaded by hand: same metrics, to 1e-5).
    assert result["restored"]
    assert result["with_ema"]["examples"] == result["ema_by_hand"]["examples"] == 12
    for metric in ("top_1", "top_5", "loss"):
        assert abs(result["with_ema"][metric] - result["ema_by_hand"][metric]) <= 1e-5
    assert result["with_ema"]["loss"] != result["without_ema"]["loss"]  # two steps move the EMA off the weights

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
builder = inputs.InputBuilder(config, sources.open_source(folder), pseudo.open_pseudo(pseudo_glob, 3))
trainer = trainer_lib.Trainer(config, strategy, builder)
iterator = iter(strategy.distribute_datasets_from_function(builder.train_dataset))
batch = next(iterator)
shares = [(int(labeled.shape[0]), int(pseudo_part.shape[0])) for labeled, pseudo_part in
          zip(strategy.experimental_local_results(batch["labeled_images"]),
              strategy.experimental_local_results(batch["pseudo_images"]))]
labeled_loss, pseudo_loss, _ = trainer.train_block(iterator, 2)
in_sync = all(np.array_equal(*[v.numpy() for v in strategy.experimental_local_results(variable.value)])
              for variable in trainer.model.trainable_variables)
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "step": result["step"],
                              "examples": result["eval"]["examples"], "shares": shares, "in_sync": in_sync,
                              "losses": [labeled_loss, pseudo_loss], "trainer_step": trainer.step}))
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

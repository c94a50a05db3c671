"""Tracker item 12: a kill at any moment, during a checkpoint write included, resumes from a
whole checkpoint."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from student import inputs
from student import sources as student_sources
from student import trainer as trainer_lib
from student.config import TrainConfig
from test_student_fixtures import REPOSITORY, small_flags


# --- 12: kills during checkpoint writes ---------------------------------------------------------

# Runs in a fresh process: the trainer's own Trainer.save in a loop, every save a new step
# whose every variable holds the step number, so a restored state shows at a glance whether
# it is one whole checkpoint (every value equal to the step restored) or a torn mix.
_CHECKPOINT_LOOP = """
import json, sys
import tensorflow as tf
from student import inputs, sources, trainer as trainer_lib
from student.config import TrainConfig
config = TrainConfig(**json.loads(sys.argv[1]))
trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                              inputs.InputBuilder(config, sources.open_source(config.labeled)))
variables = list(trainer.model.variables) + list(trainer.optimizer.variables) + trainer.average.shadows
fill = tf.function(lambda step: [v.assign(tf.fill(v.shape, tf.cast(step, v.dtype))) for v in variables])
step = trainer.restore()
print("ready", flush=True)
while True:
    step += 1
    fill(tf.constant(step))
    trainer.save()
"""
FREEZES = 12


def _torn(directory):
    """What in a checkpoint directory is not part of a committed checkpoint."""
    state = tf.train.get_checkpoint_state(directory)
    committed = int(re.search(r"ckpt-(\d+)$", state.model_checkpoint_path).group(1)) if state else 0
    leftovers = []
    for name in os.listdir(directory):
        number = re.match(r"ckpt-(\d+)", name)
        if name.startswith("checkpoint.tmp") or "_temp" in name or (number and int(number.group(1)) > committed):
            leftovers.append(name)
    return leftovers


def test_kills_at_random_moments_during_checkpoint_writes_resume_from_a_whole_checkpoint(image_folder, tmp_path):
    """SIGSTOP at random moments of a loop that checkpoints without pause, a copy of the
    checkpoint directory as it stands, SIGCONT: each copy is exactly what SIGKILL at that
    moment leaves on disk (a stopped process writes nothing more; data it already wrote
    stays), so one process gives many kills. The last one is a real SIGKILL. Every copy
    must restore the step the checkpoint state names, whole, and take the next save."""
    flags = small_flags(image_folder, str(tmp_path / "writer"), num_classes=3, labeled_examples=12,
                        checkpoint_every=1, keep_checkpoints=2)
    log = open(tmp_path / "writer.log", "w")
    writer = subprocess.Popen([sys.executable, "-c", _CHECKPOINT_LOOP, json.dumps(flags)], cwd=REPOSITORY,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.PIPE,
                              stderr=log, text=True)
    directory = str(tmp_path / "writer" / "checkpoints")
    snapshots = []
    try:
        assert writer.stdout.readline().strip() == "ready", (tmp_path / "writer.log").read_text()[-3000:]
        deadline = time.time() + 120
        while tf.train.latest_checkpoint(directory) is None and time.time() < deadline:
            time.sleep(0.01)
        rng, last_write = random.Random(12), None
        for index in range(FREEZES + 1):
            if index % 2:  # any moment
                time.sleep(rng.uniform(0.0, 0.15))
            else:  # a moment inside a write (its temporary files are there), a new write each time
                until = time.time() + 20
                while time.time() < until:
                    writing = [name for name in os.listdir(directory) if "_temp" in name]
                    if writing and writing != last_write:
                        break
                    time.sleep(0.001)
                last_write = writing
                time.sleep(rng.uniform(0.0, 0.004))
            os.kill(writer.pid, signal.SIGSTOP if index < FREEZES else signal.SIGKILL)
            if index < FREEZES:
                _, status = os.waitpid(writer.pid, os.WUNTRACED)
                assert os.WIFSTOPPED(status)
            else:
                writer.wait()
            snapshots.append(str(tmp_path / f"kill-{index}"))
            shutil.copytree(directory, snapshots[-1])
            if index < FREEZES:
                os.kill(writer.pid, signal.SIGCONT)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
        log.close()
    torn = [_torn(snapshot) for snapshot in snapshots]
    assert sum(1 for leftovers in torn if leftovers) >= 3, f"too few kills landed inside a write: {torn}"

    config = TrainConfig(**{**flags, "model_dir": str(tmp_path / "resumed")})
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                                  inputs.InputBuilder(config, student_sources.open_source(image_folder)))
    variables = list(trainer.model.variables) + list(trainer.optimizer.variables) + trainer.average.shadows

    fill_all = tf.function(lambda step: [v.assign(tf.fill(v.shape, tf.cast(step, v.dtype))) for v in variables])
    all_equal = tf.function(lambda step: tf.reduce_all([tf.reduce_all(tf.equal(v, tf.cast(step, v.dtype)))
                                                        for v in variables]))

    def fill(step):
        fill_all(tf.constant(step))

    def assert_whole(step):
        if not bool(all_equal(tf.constant(step))):
            torn_variables = [v.path for v in variables if not np.all(np.asarray(v.numpy()) == step)]
            raise AssertionError(f"restored step {step} but {torn_variables[:5]} hold other values")

    for snapshot, leftovers in zip(snapshots, torn):
        shutil.rmtree(trainer.checkpoint_directory, ignore_errors=True)
        shutil.copytree(snapshot, trainer.checkpoint_directory)
        named = int(re.search(r"ckpt-(\d+)$", tf.train.get_checkpoint_state(snapshot).model_checkpoint_path).group(1))
        fill(-1)
        assert trainer.restore() == named, (snapshot, leftovers)
        assert_whole(named)
        if not leftovers:
            continue
        # The resumed process's manager, over the torn leftovers: its next checkpoint is whole too.
        trainer.manager = tf.train.CheckpointManager(trainer.checkpoint, trainer.checkpoint_directory,
                                                     max_to_keep=config.keep_checkpoints)
        fill(named + 1)
        trainer.save()
        fill(-1)
        assert trainer.restore() == named + 1
        assert_whole(named + 1)

"""Preemption: a training process killed with SIGKILL resumes and ends where an uninterrupted run ends."""

import os
import re
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from test_student_fixtures import run_training_process, small_flags, write_image_folder, write_pseudo_labels

TOTAL_STEPS = 30


def test_a_killed_run_resumes_at_its_checkpoint_and_ends_with_the_uninterrupted_weights(tmp_path):
    folder = write_image_folder(str(tmp_path / "images"), num_classes=3, per_class=4)
    pseudo_glob = write_pseudo_labels(str(tmp_path / "labels"), num_classes=3, num_examples=10)

    def flags(model_dir):
        # Op determinism makes two processes compute bit-identical steps; the input and the
        # augmentation are functions of the step by construction (student/inputs.py).
        return small_flags(folder, str(model_dir), pseudo=pseudo_glob, eval=folder, train_steps=TOTAL_STEPS,
                           checkpoint_every=2, log_every=2, ema_decay=0.9, deterministic=True)

    uninterrupted = run_training_process(flags(tmp_path / "uninterrupted"), wait=False)
    killed = run_training_process(flags(tmp_path / "killed"), wait=False)
    checkpoints = str(tmp_path / "killed" / "checkpoints")
    deadline = time.time() + 180
    while tf.train.latest_checkpoint(checkpoints) is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed:\n" + killed.communicate()[0][-3000:]
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    killed_at = int(re.search(r"ckpt-(\d+)$", tf.train.latest_checkpoint(checkpoints)).group(1))
    assert 0 < killed_at < TOTAL_STEPS
    assert not (tmp_path / "killed" / "model.keras").exists()

    returncode, output = run_training_process(flags(tmp_path / "killed"))
    assert returncode == 0, output[-3000:]
    assert f"resumed from step {killed_at} of {TOTAL_STEPS}" in output
    assert f"step {killed_at}/" not in output and f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in output

    output, _ = uninterrupted.communicate(timeout=240)
    assert uninterrupted.returncode == 0, output[-3000:]
    expected = keras.saving.load_model(str(tmp_path / "uninterrupted" / "model.keras")).get_weights()
    resumed = keras.saving.load_model(str(tmp_path / "killed" / "model.keras")).get_weights()
    assert len(expected) == len(resumed)
    for want, got in zip(expected, resumed):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

"""Flag validation, derived values and the resume check of student.config (no training)."""

import dataclasses
import math
import os
import subprocess
import sys

import pytest

from student import config as config_lib
from student.config import ConfigError, TrainConfig

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(**overrides):
    values = dict(model="resnet_rs_tiny", labeled="/data/folder", model_dir="/tmp/run")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("overrides, flag", [
    (dict(model="resnet_rs_9"), "--model"),
    (dict(labeled=""), "--labeled"),
    (dict(model_dir=""), "--model_dir"),
    (dict(pseudo_ratio=5), "--pseudo_ratio"),  # without --pseudo
    (dict(hard_pseudo_labels=True), "--hard_pseudo_labels"),
    (dict(pseudo="/labels/train-*", pseudo_ratio=0), "--pseudo_ratio"),
    (dict(pseudo="tfds:imagenet2012"), "--pseudo"),
    (dict(batch_size=0), "--batch_size"),
    (dict(steps_per_execution=3, checkpoint_every=10), "--checkpoint_every"),
    (dict(steps_per_execution=5, checkpoint_every=10, log_every=7), "--log_every"),
    (dict(strategy="horovod"), "--strategy"),
    (dict(strategy="cpu", tpu="my-tpu"), "--tpu"),
    (dict(precision="float16"), "--precision"),
    (dict(resume_input="random"), "--resume_input"),
    (dict(label_smoothing=1.0), "--label_smoothing"),
    (dict(ema_decay=1.0), "--ema_decay"),
])
def test_wrong_flags_are_refused_by_name(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        config_lib.validate(make(**overrides))


def test_defaults_are_the_papers_recipe():
    config = make(pseudo="/labels/train-*", labeled_examples=1281167)
    config_lib.validate(config)
    assert (config.pseudo_ratio, config.momentum, config.weight_decay) == (3, 0.9, 4e-5)
    assert (config.label_smoothing, config.ema_decay, config.epochs, config.batch_size) == (0.1, 0.9999, 350, 4096)
    assert config.learning_rate == pytest.approx(0.1 * 4096 / 256)
    assert config.pseudo_batch_size == 3 * 4096
    assert config.total_steps() == math.ceil(350 * 1281167 / 4096) == 109475
    assert config.warmup_steps() == round(5 * 1281167 / 4096)
    assert config.model_config.randaugment_magnitude == 10
    assert make(randaugment_magnitude=15).model_config.randaugment_magnitude == 15


def test_train_steps_override_epochs_and_cap_warmup():
    config = make(labeled_examples=100, batch_size=10, train_steps=4)
    assert config.total_steps() == 4 and config.warmup_steps() == 4


def test_config_json_records_the_model_and_resume_refuses_a_changed_invariant(tmp_path):
    config = make(model_dir=str(tmp_path), labeled_examples=12, num_classes=3)
    config.write()
    written = (tmp_path / config_lib.CONFIG_FILE).read_text()
    assert '"model": "resnet_rs_tiny"' in written and '"learning_rate"' in written
    config_lib.check_resumable(config)
    with pytest.raises(ConfigError, match="--batch_size=8"):
        config_lib.check_resumable(dataclasses.replace(config, batch_size=8))


def test_command_line_names_the_wrong_flag_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "student.train", "--model=resnet_rs_tiny", f"--labeled={tmp_path}",
         f"--model_dir={tmp_path / 'run'}", "--pseudo_ratio=2"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode != 0
    assert "--pseudo_ratio" in result.stderr
    assert not (tmp_path / "run").exists()

"""The README's quickstart block, run command by command: what a new user copies must work.

Stand-ins, since nothing downloads here: the data variables point at generated folders
(1,000 classes named as ImageNet's, so the exported ImageNet teacher and the labeled data
agree), the published weights are tf_keras' ResNetRS50 saved as a Keras-applications .h5 (random
values in the real file's layout), and training gets tiny settings appended (absl keeps a
flag's last value). TensorBoard is asked to `--inspect` the run instead of serving it.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import real_photos

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quickstart: tests/test_readme.py runs this block -->"
TINY_TRAINING = ("--train_steps=2 --batch_size=4 --eval_batch_size=8 --checkpoint_every=2 --log_every=1 "
                 "--jit_compile=graph")
# Appended per entry point: tiny settings, and a fixed compile mode (measuring both modes of
# resnet_rs_50 would double the test's compile time for nothing it checks).
APPENDED = {
    "teacher.evaluate": "--batch_size=8",
    "pipeline.label": "--jit_compile=graph --max_batch_size=8",
    "student.train": f"--model=resnet_rs_tiny {TINY_TRAINING}",
    # A 2-step student is confident about nothing: threshold 0, so its round has labels.
    "student.selftrain": f"--model=resnet_rs_tiny --train_flags='{TINY_TRAINING}' "
                         "--label_flags='--per_class=1300 --min_confidence=0 --jit_compile=graph'",
}


def quickstart_commands():
    """The block's commands, continuation lines joined, comments and blank lines dropped."""
    text = README.read_text()
    assert MARKER in text, "README.md lost its quickstart marker"
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER):], re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
        else:
            commands.append(current)
            current = ""
    return commands


def _write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """(working directory, {variable: value}) standing in for a user's data and weights."""
    from teacher import directory

    root = tmp_path_factory.mktemp("readme")
    names = directory.class_names_from("tfds:imagenet2012", 1000)
    rng = np.random.default_rng(0)
    for index, name in enumerate(names):
        _write_png(root / "labeled" / name / f"{index}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for index, name in enumerate(names[:3]):
        for copy in range(2):
            _write_png(root / "holdout" / name / f"{copy}.png", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    for name, pixels in real_photos():
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((160, 160))
        (root / "unlabeled").mkdir(exist_ok=True)
        image.save(root / "unlabeled" / f"{name}.jpg", quality=90)
    import tf_keras

    reference = tf_keras.applications.ResNetRS50(weights=None, include_preprocessing=False, input_shape=(160, 160, 3))
    # Random weights spread their probability over 1,000 classes, below any threshold; a bias
    # on two classes makes the stand-in teacher confident, so the run has labels to train on.
    bias = np.zeros(1000, np.float32)
    bias[[1, 2]] = 12.0
    reference.get_layer("predictions").bias.assign(bias)
    reference.save_weights(str(root / "resnet-rs-50-i160.h5"))
    return root, {"LABELED": str(root / "labeled"), "HOLDOUT": str(root / "holdout"),
                  "UNLABELED": str(root / "unlabeled" / "*"), "RUNS": str(root / "runs")}


def _as_run_here(command):
    """A README command -> what the test runs: tiny settings appended, TensorBoard inspected."""
    words = shlex.split(command)
    if words[0] == "tensorboard":
        return command.replace("tensorboard ", "tensorboard --inspect ", 1)
    if words[:2] == ["python", "-m"] and words[2] in APPENDED:
        return f"{command} {APPENDED[words[2]]}"
    return command


def test_the_quickstart_runs_as_written(stand_ins):
    root, variables = stand_ins
    commands = quickstart_commands()
    assignments = commands.pop(0)
    assert sorted(re.findall(r"\b([A-Z]+)=", assignments)) == sorted(variables), \
        "the quickstart's first line sets the variables this test stands in for"
    modules = [shlex.split(command)[2] for command in commands if command.startswith("python -m")]
    assert modules == ["teacher.export", "teacher.evaluate", "pipeline.label", "pipeline.report", "student.train",
                       "student.selftrain"], modules
    environment = dict(os.environ, **variables)
    # `python` and `tensorboard` as a user who installed the package finds them.
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment.get("PATH", "")
    outputs = {}
    for command in commands:
        result = subprocess.run(["bash", "-c", _as_run_here(command)], cwd=root, env=environment,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"$ {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs[shlex.split(command)[2] if command.startswith("python") else "tensorboard"] = result.stdout
    runs = Path(variables["RUNS"])
    assert json.loads((runs / "teacher" / "teacher.json").read_text())["random_init"] is False
    assert "top-1" in outputs["teacher.evaluate"]
    manifest = json.loads((runs / "labels" / "manifest.json").read_text())
    assert manifest["counts"]["read"] == len(list((root / "unlabeled").iterdir()))
    assert (runs / "labels" / "report.html").stat().st_size > 0
    assert (runs / "student1" / "teacher" / "teacher.json").exists()
    assert "train" in outputs["tensorboard"] and "loss" in outputs["tensorboard"]
    summary = json.loads((runs / "loop" / "summary.json").read_text())
    assert summary, "the loop wrote no summary"

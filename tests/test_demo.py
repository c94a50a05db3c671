"""`make demo` keeps working: the whole loop (teacher, label, report, student) on real digits,
run by student.selftrain with every step through its real entry point; a few steps only, so no
accuracy claim. And the demo hands every step the flags its recipe documents."""

import json
import pathlib
import subprocess
import sys

from student import selftrain_steps

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_self_training_loop(tmp_path):
    result = subprocess.run([sys.executable, "-m", "demo", f"--workdir={tmp_path / 'demo'}", "--rounds=1",
                             "--teacher_steps=8", "--student_steps=8", "--min_confidence=0",
                             "--no-require_improvement"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout
    for step in ("python -m student.selftrain", "python -m student.train", "python -m pipeline.label",
                 "python -m pipeline.report"):
        assert step in output
    assert "teacher (labeled only)" in output and "control (labeled only)" in output and "student 1" in output
    assert "correct of" in output and "x the control's" in output
    workdir = tmp_path / "demo"
    assert (workdir / "round1" / "report.html").stat().st_size > 10_000
    assert (workdir / "round1" / "student" / "teacher" / "teacher.json").exists()
    summary = json.loads((workdir / "summary.json").read_text())
    assert [row["name"] for row in summary["rows"]] == ["teacher", "control", "student 1"]
    assert (workdir / "control" / "eval_results.json").exists()


def test_the_demo_gives_every_step_the_recipes_flags():
    # The README's demo numbers were measured with exactly these flags: a change here changes them.
    from demo import __main__ as demo

    settings = demo.loop_settings("/w", {"labeled": 126, "unlabeled": 1132}, 2, 800, 1600, 0.3, 0).normalized()
    flags = {step.name: step.flags for step in selftrain_steps.plan(settings)}
    shared = ["--model=resnet_rs_tiny", "--labeled=/w/data/labeled", "--eval=/w/data/test", "--batch_size=32",
              "--warmup_epochs=5", "--base_learning_rate=0.4", "--ema_decay=0.99", "--eval_batch_size=64",
              "--shuffle_buffer=2048", "--labeled_examples=126", "--crop_min_area=0.5", "--norandom_flip",
              "--deterministic", "--jit_compile=xla", "--seed=0"]
    assert sorted(flags["teacher"]) == sorted(shared + [
        "--model_dir=/w/teacher", "--train_steps=800", "--checkpoint_every=800", "--log_every=200",
        "--randaugment_magnitude=5"])
    # The control: the students' schedule and noise, no pseudo-labels (nor their flags).
    assert sorted(flags["control"]) == sorted(shared + [
        "--model_dir=/w/control", "--train_steps=1600", "--checkpoint_every=1600", "--log_every=400",
        "--randaugment_magnitude=10"])
    for round_index, teacher in ((1, "/w/teacher/teacher"), (2, "/w/round1/student/teacher")):
        assert sorted(flags[f"round{round_index}-student"]) == sorted(shared + [
            f"--model_dir=/w/round{round_index}/student", "--train_steps=1600", "--checkpoint_every=1600",
            "--log_every=400", "--randaugment_magnitude=10", "--pseudo_ratio=3",
            f"--pseudo=/w/round{round_index}/labels/train-*.tfrecord"])
        assert flags[f"round{round_index}-label"] == [
            f"--teacher={teacher}", "--input=/w/data/unlabeled/*", f"--output=/w/round{round_index}/labels",
            "--min_confidence=0.3", "--num_shards=4", "--max_batch_size=64", "--jit_compile=xla",
            "--overwrite"]
        assert flags[f"round{round_index}-report"] == [
            f"--labels=/w/round{round_index}/labels", f"--output=/w/round{round_index}/report.html",
            "--holdout=/w/data/test", "--format=text"]

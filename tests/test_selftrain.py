"""student.selftrain: the loop end to end on tiny folders, its resumption, and its refusals.

The loop runs as a user runs it (python -m student.selftrain, each step its own process), with
resnet_rs_tiny, 2 training steps and 12 images per folder: about 10 s of work per step.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from student import selftrain, selftrain_steps
from test_student_fixtures import REPOSITORY, write_image_folder

FAST_TRAIN = ("--batch_size=4 --train_steps=2 --checkpoint_every=2 --log_every=1 --eval_batch_size=8 "
              "--shuffle_buffer=16 --jit_compile=graph --strategy=cpu --warmup_epochs=0.5 --ema_decay=0.5")
# --per_class=0: every unlabeled image kept once, so the counts below are exact (the default
# balance is tested in test_label_copies.py and runs in test_demo.py).
FAST_LABEL = "--num_shards=1 --max_batch_size=8 --jit_compile=graph --min_confidence=0 --per_class=0"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("selftrain")
    labeled = write_image_folder(str(root / "labeled"), num_classes=3, per_class=4)
    write_image_folder(str(root / "unlabeled"), num_classes=3, per_class=4, seed=5)  # labels unused
    return {"root": root, "labeled": labeled, "unlabeled": str(root / "unlabeled" / "*" / "*")}


def loop_argv(data, workdir, rounds, **overrides):
    flags = {"labeled": data["labeled"], "unlabeled": data["unlabeled"], "workdir": str(workdir),
             "rounds": rounds, "model": "resnet_rs_tiny", "eval": data["labeled"], "holdout": data["labeled"],
             "train_flags": FAST_TRAIN, "student_train_flags": "--pseudo_ratio=1", "label_flags": FAST_LABEL}
    flags.update(overrides)
    return [f"--{name}={value}" for name, value in flags.items() if value is not None]


def run_loop(argv):
    result = subprocess.run([sys.executable, "-m", "student.selftrain", *argv], cwd=REPOSITORY, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return result.returncode, result.stdout, result.stderr


def commands(output):
    return re.findall(r"^\$ python -m ([\w.]+) (.*)$", output, re.MULTILINE)


def refusal(argv, capsys):
    """The message of a loop that stops with a usage error before any step (run in this process)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        selftrain.main(argv)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith("student.selftrain: error: "), error
    return error


@pytest.fixture(scope="module")
def loop(data):
    """A 1-round loop, then the same command with --rounds=2: the second run continues the first."""
    workdir = data["root"] / "work"
    code, first, errors = run_loop(loop_argv(data, workdir, 1))
    assert code == 0, first[-3000:] + errors[-3000:]
    round1 = {name: os.stat(workdir / name).st_mtime_ns for name in (
        "teacher/eval_results.json", "round1/labels/manifest.json", "round1/report.html", "round1/report.txt",
        "round1/student/eval_results.json")}
    code, second, errors = run_loop(loop_argv(data, workdir, 2))
    assert code == 0, second[-3000:] + errors[-3000:]
    return {"workdir": workdir, "first": first, "second": second, "round1_mtimes": round1}


def test_the_loop_trains_a_teacher_then_labels_reports_and_trains_a_student_per_round(loop, data):
    workdir = loop["workdir"]
    first = commands(loop["first"])
    assert [module for module, _ in first] == ["student.train", "pipeline.label", "pipeline.report", "student.train"]
    assert "--pseudo" not in first[0][1] and f"--model_dir={workdir}/teacher " in first[0][1]
    assert f"--teacher={workdir}/teacher/teacher" in first[1][1] and "--overwrite" in first[1][1]
    assert f"--holdout={data['labeled']}" in first[2][1] and "--format=text" in first[2][1]
    assert shlex.split(first[3][1])[-1] == f"--pseudo={workdir}/round1/labels/train-*.tfrecord"
    assert "--pseudo_ratio=1" in first[3][1] and "--pseudo_ratio" not in first[0][1]  # students' flags only

    # Round 2 is taught by student 1, and labels into its own directory.
    second = commands(loop["second"])
    assert [module for module, _ in second] == ["pipeline.label", "pipeline.report", "student.train"]
    assert f"--teacher={workdir}/round1/student/teacher" in second[0][1]
    manifest = json.loads((workdir / "round2" / "labels" / "manifest.json").read_text())
    assert manifest["teacher"]["path"] == f"{workdir}/round1/student/teacher"
    config = json.loads((workdir / "round2" / "student" / "config.json").read_text())
    assert config["pseudo"] == f"{workdir}/round2/labels/train-*.tfrecord" and config["model"] == "resnet_rs_tiny"
    assert (workdir / "round2" / "report.html").stat().st_size > 10_000
    assert "holdout" in (workdir / "round2" / "report.txt").read_text()
    assert (workdir / "round2" / "student" / "teacher" / "teacher.json").exists()

    summary = json.loads((workdir / "summary.json").read_text())
    assert [row["name"] for row in summary["rows"]] == ["teacher", "student 1", "student 2"]
    for row in summary["rows"]:
        assert 0 <= row["top_1"] <= 1 and row["error"] == pytest.approx(1 - row["top_1"])
    for row in summary["rows"][1:]:
        assert row["counts"]["kept"] == 12 and row["counts"]["below_threshold"] == 0
    assert re.search(r"^student 2\s+resnet_rs_tiny\s+[01]\.\d{4}\s+[01]\.\d{4}\s+12\s+0\s+0$", loop["second"],
                     re.MULTILINE)
    assert os.path.exists(workdir / "logs" / "round2-student.log")


def test_a_rerun_skips_every_finished_step_and_continues_at_the_first_unfinished_one(loop):
    second = loop["second"]
    assert second.count("skip: finished earlier") == 4  # the teacher and round 1's three steps
    assert "(4 finished earlier)" in second
    assert all(f"{loop['workdir']}/round2/" in arguments for _, arguments in commands(second))
    for name, mtime in loop["round1_mtimes"].items():
        assert os.stat(loop["workdir"] / name).st_mtime_ns == mtime, f"{name} was rewritten"
    log = (loop["workdir"] / "logs" / "round1-label.log").read_text()
    assert log.count("$ python -m pipeline.label") == 1


def test_an_interrupted_training_step_is_rerun_and_resumes_from_its_checkpoint(loop, data):
    # A loop killed after round 2's last checkpoint but before its export: the rerun runs only
    # that step, and student.train picks up its checkpoint instead of training again.
    results = loop["workdir"] / "round2" / "student" / "eval_results.json"
    results.unlink()
    code, output, errors = run_loop(loop_argv(data, loop["workdir"], 2))
    assert code == 0, output[-3000:] + errors[-3000:]
    assert [module for module, _ in commands(output)] == ["student.train"]
    assert output.count("skip: finished earlier") == 6
    assert "resumed from step 2 of 2" in output and results.exists()


def test_a_loop_killed_between_rounds_continues_on_rerun(data, tmp_path):
    # SIGKILL to the loop and the step it runs (one process group) once round 1's student has
    # finished: round 2's labeling may have started, or not. The same command then skips the
    # teacher and round 1 and finishes round 2.
    workdir = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-m", "student.selftrain", *loop_argv(data, workdir, 2)],
                               cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    finished = workdir / "round1" / "student" / "eval_results.json"
    try:
        deadline = time.monotonic() + 600
        while not finished.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert finished.exists() and process.poll() is None, "round 1 did not finish while the loop ran"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (workdir / "round2" / "student" / "eval_results.json").exists()
    code, output, errors = run_loop(loop_argv(data, workdir, 2))
    assert code == 0, output[-3000:] + errors[-3000:]
    assert output.count("skip: finished earlier") == 4  # the teacher and round 1's three steps
    assert [module for module, _ in commands(output)][-1] == "student.train"
    assert all(f"{workdir}/round2/" in arguments for _, arguments in commands(output))
    summary = json.loads((workdir / "summary.json").read_text())
    assert [row["name"] for row in summary["rows"]] == ["teacher", "student 1", "student 2"]
    assert all(row["top_1"] is not None for row in summary["rows"])
    # Wall seconds of the steps this run ran, and only those: the skipped ones have none.
    assert set(summary["step_seconds"]) == {"round2-label", "round2-report", "round2-student"}
    assert all(seconds > 0 for seconds in summary["step_seconds"].values())


def test_a_changed_setting_a_finished_step_used_is_refused(loop, data, capsys):
    message = refusal(loop_argv(data, loop["workdir"], 2, label_flags=FAST_LABEL + " --top_k=2"), capsys)
    assert "--label_flags changed" in message and "round1-label" in message and "--overwrite" in message
    message = refusal(loop_argv(data, loop["workdir"], 2, student_model="resnet_rs_50"), capsys)
    assert "--student_model changed" in message and "round1-student" in message


def test_a_later_steps_output_after_an_unfinished_step_is_refused_as_stale(loop, data, capsys):
    manifest = loop["workdir"] / "round1" / "labels" / "manifest.json"
    manifest.rename(manifest.with_suffix(".moved"))
    try:
        message = refusal(loop_argv(data, loop["workdir"], 2), capsys)
    finally:
        manifest.with_suffix(".moved").rename(manifest)
    assert "round1-label) is unfinished" in message and "round1/report.html" in message


def test_the_teacher_may_be_a_teacher_directory_or_a_training_run(loop, tmp_path):
    run_dir = str(loop["workdir"] / "teacher")
    assert selftrain_steps.resolve_teacher(run_dir) == (f"{run_dir}/teacher", run_dir)
    assert selftrain_steps.resolve_teacher(f"{run_dir}/teacher") == (f"{run_dir}/teacher", run_dir)
    with pytest.raises(selftrain.SelfTrainError, match=r"--teacher=.*neither .*teacher.json"):
        selftrain_steps.resolve_teacher(str(tmp_path))


@pytest.mark.parametrize("overrides, expected", [
    ({"rounds": 0}, "--rounds=0: must be at least 1"),
    ({"labeled": "/no/such/folder"}, "--labeled=/no/such/folder: no such"),
    ({"unlabeled": "/no/such/*.jpg"}, "--unlabeled=/no/such/*.jpg: no such"),
    ({"train_flags": "--model_dir=/tmp/x"}, "--train_flags sets --model_dir of student.train, which the loop sets"),
    ({"label_flags": "--nooverwrite"}, "--label_flags sets --overwrite of pipeline.label"),
    ({"train_flags": "--batch_size 4"}, "--train_flags: '4' is not a flag"),
    ({"train_flags": "'--batch_size=4"}, "--train_flags=\"'--batch_size=4\": No closing quotation"),
    ({"train_flags": "--batch_size=0"}, "--train_flags: student.train would refuse it: --batch_size: must be positive"),
    ({"student_train_flags": "--batch_sise=4"}, "--student_train_flags: 'batch_sise' is not a flag of student.train"),
    ({"student_train_flags": "--pseudo_ratio=x"}, "--student_train_flags: student.train would refuse it"),
    ({"student_model": "resnet_rs_9"}, "--student_model: student.train would refuse it: --model: 'resnet_rs_9'"),
    ({"label_flags": "--min_confidence=2"}, "--label_flags: pipeline.label would refuse it: --min_confidence=2.0"),
    ({"report_flags": "--chart_classes=many"}, "--report_flags: pipeline.report would refuse it"),
    ({"teacher": "/no/such/teacher"}, "--teacher=/no/such/teacher: neither"),
    ({"teacher_train_flags": "--train_steps=3", "teacher": "/x"}, "--teacher_train_flags: no teacher is trained"),
])
def test_a_bad_flag_is_refused_before_any_step_by_its_name(data, tmp_path, capsys, overrides, expected):
    overrides = dict(overrides)
    message = refusal(loop_argv(data, tmp_path / "work", overrides.pop("rounds", 2), **overrides), capsys)
    assert expected in message, message
    assert not (tmp_path / "work").exists()  # refused before anything was written


def test_a_missing_required_flag_is_a_usage_error(data, tmp_path, capsys):
    message = refusal(loop_argv(data, tmp_path / "work", 1, unlabeled=None), capsys)
    assert message == "student.selftrain: error: --unlabeled is required.\n"


def test_tf_logs_is_passed_on_to_every_step_and_free_to_change(data, tmp_path):
    argv = loop_argv(data, tmp_path / "work", 2, label_flags="--notf_logs")
    quiet, loud = selftrain.parse_args(argv).normalized(), selftrain.parse_args(argv + ["--tf_logs"]).normalized()
    assert loud.tf_logs and loud.recorded() == quiet.recorded()  # a rerun may add or drop it
    assert selftrain.parse_args(selftrain.to_argv(loud)) == loud
    for without, step in zip(selftrain_steps.plan(quiet), selftrain_steps.plan(loud)):
        assert "--tf_logs" not in without.flags and step.flags.count("--tf_logs") == 1, step.name
        assert sorted(set(step.flags) - {"--tf_logs"}) == sorted(without.flags)
    # Before the step's own flags: --label_flags=--notf_logs still quiets that step alone.
    label = next(step.flags for step in selftrain_steps.plan(loud) if step.module == "pipeline.label")
    assert label.index("--tf_logs") < label.index("--notf_logs")


def test_a_failing_step_stops_the_loop_with_its_own_error_and_log(data, tmp_path, tiny_teacher):
    # A randomly initialised --teacher: only pipeline.label reads teacher.json's random_init and
    # refuses it, so the loop must pass its words on (and where the whole log is).
    code, output, errors = run_loop(loop_argv(data, tmp_path / "work", 1, teacher=tiny_teacher))
    assert code == 1 and [module for module, _ in commands(output)] == ["pipeline.label"]
    # The step's last lines, then the error as one line (models/cli.py's convention).
    *tail, error = errors.splitlines()
    assert error.startswith("student.selftrain: error: step round1-label failed: pipeline.label exited with status")
    assert "randomly initialised" in "".join(tail) and "--allow_random_teacher" in "".join(tail)
    assert f"{tmp_path}/work/logs/round1-label.log" in error and "rerun the same command" in error
    assert not (tmp_path / "work" / "round1" / "labels" / "manifest.json").exists()


def test_overwrite_discards_only_what_the_loop_wrote(tmp_path):
    for name in ("teacher", "control", "round1", "round12", "logs", "data", "roundabout"):
        (tmp_path / name).mkdir()
    for name in ("selftrain.json", "summary.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    selftrain.discard(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["data", "notes.txt", "roundabout"]


def test_the_printed_command_parses_back_to_the_same_settings(data, tmp_path):
    settings = selftrain.parse_args(loop_argv(data, tmp_path, 3, student_model="resnet_rs_50",
                                              train_flags="--batch_size=8 --class_names='a b.txt'"))
    assert settings.train_flags == ("--batch_size=8", "--class_names=a b.txt")
    assert selftrain.parse_args(shlex.split(shlex.join(selftrain.to_argv(settings)))) == settings


def test_flags_every_step_takes_pass_the_loops_checks(data, tmp_path):
    # The preflight must not refuse what a step accepts: absl's and the CLIs' shared flags, Beam options.
    settings = selftrain.parse_args(loop_argv(
        data, tmp_path / "work", 2, train_flags=FAST_TRAIN + " --tf_logs --verbosity=0 --nodeterministic",
        label_flags=FAST_LABEL + " --tf_logs --direct_num_workers=2 --dedup", report_flags="--holdout_limit=5"))
    settings = settings.normalized()
    selftrain.preflight(settings, selftrain_steps.plan(settings))


def test_the_control_trains_the_students_flags_on_labeled_data_alone(data, tmp_path):
    settings = selftrain.parse_args(loop_argv(data, tmp_path / "work", 2, control="true",
                                              student_train_flags="--pseudo_ratio=1 --nohard_pseudo_labels "
                                                                  "--randaugment_magnitude=7")).normalized()
    plan = {step.name: step for step in selftrain_steps.plan(settings)}
    assert list(plan)[:2] == ["teacher", "control"] and plan["control"].independent
    control, student = plan["control"].flags, plan["round1-student"].flags
    assert f"--model_dir={tmp_path}/work/control" in control and "--randaugment_magnitude=7" in control
    assert not any(flag.startswith(("--pseudo", "--nohard_pseudo", "--hard_pseudo")) for flag in control)
    assert sorted(set(student) - set(control)) == sorted(
        ["--pseudo_ratio=1", "--nohard_pseudo_labels", f"--model_dir={tmp_path}/work/round1/student",
         f"--pseudo={tmp_path}/work/round1/labels/train-*.tfrecord"])
    selftrain.preflight(settings, list(plan.values()))  # student.train would accept the control's flags


def test_control_added_to_a_finished_loop_trains_the_control_alone(loop, data):
    code, output, errors = run_loop(loop_argv(data, loop["workdir"], 2, control="true"))
    assert code == 0, output[-3000:] + errors[-3000:]
    (module, arguments), = commands(output)
    assert module == "student.train" and f"--model_dir={loop['workdir']}/control " in arguments
    assert "--pseudo" not in arguments and output.count("skip: finished earlier") == 7
    summary = json.loads((loop["workdir"] / "summary.json").read_text())
    assert [row["name"] for row in summary["rows"]] == ["teacher", "control", "student 1", "student 2"]
    assert 0 <= summary["rows"][1]["top_1"] <= 1
    assert re.search(r"^control\s+resnet_rs_tiny\s+[01]\.\d{4}", output, re.MULTILINE)

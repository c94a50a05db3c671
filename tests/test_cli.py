"""What every entry point shares (models/cli.py): --help, exit codes, misspelt flags, TF's log noise,
and the labeling job's refusal of a randomly initialised teacher (with the report's banner)."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from models import cli
from pipeline import label, options
from pipeline.options import LabelSettings, UsageError
from pipeline.report import cli as report
from pipeline.report.html import render
from pipeline.report.summary import RANDOM_TEACHER_WARNING, summarize
from test_report import SCRIPT_CLASS, write_synthetic_run

CLIS = ("pipeline.label", "pipeline.report", "pipeline.select", "student.selftrain", "student.train", "teacher.evaluate",
        "teacher.export")
ABSL_APPS = ("student.train", "teacher.export")  # absl.app programs: absl's logging flags, listed by --helpfull


def _environment(**extra):
    """os.environ without TF_CPP_MIN_LOG_LEVEL (conftest sets it; the CLIs must set it themselves)."""
    environment = {key: value for key, value in os.environ.items() if key not in (cli.LEVEL, cli.QUIETED_LEVEL)}
    environment.update(extra)
    return environment


def _cli(module, *args, **extra_environment):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=_environment(**extra_environment))


# Per CLI: its help's group titles in order, flags it must list, and enum values it must show.
HELP = {
    "pipeline.label": (["Input:", "Prediction index:", "Teacher:", "Selection:", "Output:", "Runtime:"],
                       ["--min_confidence=FLOAT", "--[no]allow_random_teacher", "--teacher=TEXT", "--predictions=TEXT"],
                       ["--balance={duplicate,none}", "--jit_compile={auto,xla,graph}",
                        "--teacher_strategy={auto,cpu,gpu,tpu}"]),
    "pipeline.select": (["Prediction index:", "Selection:", "Output:", "Runtime:"],
                        ["--predictions=TEXT", "--min_confidence=FLOAT", "--target_shard_mb=INT", "--fetch_threads=INT"],
                        ["--balance={duplicate,none}"]),
    "pipeline.report": (["Input:", "Output:", "Recompute:", "Runtime:"], ["--labels=TEXT", "--[no]recompute"],
                        ["--format={html,text,json}"]),
    "student.selftrain": (["Data:", "Models:", "Steps' flags", "Work directory:", "Runtime:"],
                          ["--labeled=TEXT", "--rounds=INT", "--train_flags=TEXT", "--report_flags=TEXT",
                           "--workdir=TEXT", "--[no]overwrite", "Required."], []),
    "student.train": (["Data:", "Pseudo labels:", "Model and output:", "Optimisation:", "Augmentation:", "Runtime:"],
                      ["--pseudo_ratio=INT", "--labeled=TEXT"],
                      ["--precision={float32,bfloat16}", "--resume_input={skip,reseed}",
                       "One of: auto, cpu, gpu, tpu, mirrored, multi_worker.", "resnet_rs_tiny"]),
    "teacher.evaluate": (["Teacher (exactly one of --teacher, --model_dir):", "Data:", "Output:", "Runtime:"],
                         ["--teacher=TEXT", "--model_dir=TEXT", "--label_offset=INT", "--batch_size=INT"],
                         ["--format={text,json}"]),
    "teacher.export": (["Source", "Output:", "Runtime:"], ["--weights=TEXT", "--model_dir=TEXT"],
                       ["One of: resnet_rs_50,"]),
}


@pytest.mark.parametrize("module", CLIS)
def test_help_lists_the_programs_own_flags_by_group_and_exits_0(module):
    result = _cli(module, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # TensorFlow's start-up lines are hidden too
    text = result.stdout
    groups, listed, choices = HELP[module]
    positions = [text.index(title) for title in groups]
    assert positions == sorted(positions)
    words = " ".join(text.split())  # help text wraps at 100 columns
    for piece in listed + choices + ["--[no]tf_logs"]:
        assert piece in words, piece
    assert "Other flags:" not in text  # every flag sits in a named group
    assert "--dataflow_endpoint" not in text and len(text.splitlines()) < 150  # Beam's 800 lines are elsewhere
    assert ("--help_beam" in text) == module.startswith("pipeline.")
    assert ("--helpfull" in text) == (module in ABSL_APPS)


def test_label_help_lists_every_flag_of_the_job():
    text = options.help_text("usage")
    for name in options.define_flags():
        assert re.search(rf"^  --(\[no\])?{name}[=\s]", text, re.MULTILINE), name
    assert "Other flags:" not in text


def test_student_help_lists_every_training_flag():
    from student import train

    text = train.help_text()
    for field in dataclasses.fields(train.TrainConfig):
        assert re.search(rf"^  --(\[no\])?{field.name}[=\s]", text, re.MULTILINE), field.name
    assert "Other flags:" not in text


@pytest.mark.parametrize("module", ["pipeline.label", "pipeline.report"])
def test_help_beam_prints_beams_pipeline_options(module):
    result = _cli(module, "--help_beam")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--temp_location" in result.stdout and "--runner" in result.stdout
    assert result.stdout.startswith(f"usage: python -m {module} ")


@pytest.mark.parametrize("module, args, message", [
    ("pipeline.label", ["--teacher=t", "--input=i", "--output=o", "--min_confidense=0.5"],
     "unknown flag --min_confidense; did you mean --min_confidence?"),
    ("pipeline.report", ["--labels=x", "--holdot=y"], "unknown flag --holdot; did you mean --holdout?"),
    ("pipeline.report", ["--labels=x", "--format=htm"],
     "--format=htm is not one of html, text, json; did you mean --format=html?"),
    ("pipeline.report", ["--format=text"], "--labels=OUT_DIR is required."),
    ("student.selftrain", ["--labeled=x", "--unlabled=y"], "unknown flag --unlabled; did you mean --unlabeled?"),
    ("student.selftrain", ["--labeled=x", "--rounds=two"],
     "--rounds=two: invalid literal for int() with base 10: 'two'"),
    ("student.selftrain", ["--labeled=x", "stray"], "unexpected argument 'stray'; every setting is a --flag."),
    ("student.train", ["--pseudo_ratoi=2"], "unknown flag --pseudo_ratoi; did you mean --pseudo_ratio?"),
    ("student.train", ["--strategy=mirored"], "--strategy=mirored is not one of auto, cpu, gpu, tpu, mirrored, "
     "multi_worker; did you mean --strategy=mirrored?"),
    ("student.train", ["--model=resnet_rs_tiny", "stray"], "unexpected argument 'stray'; every setting is a --flag."),
    ("teacher.evaluate", ["--teachr=x", "--data=y"], "unknown flag --teachr; did you mean --teacher?"),
    ("teacher.evaluate", ["--teacher=t", "--data=d", "--format=jsn"],
     "--format=jsn is not one of text, json; did you mean --format=json?"),
    ("teacher.export", ["--num_clases=3"], "unknown flag --num_clases; did you mean --num_classes?"),
    ("teacher.export", ["--model=resnet_rs_tiny"], "--output is required."),
])
def test_a_usage_error_is_one_line_and_exit_status_2(module, args, message):
    result = _cli(module, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == f"{module}: error: {message}\n"  # nothing else: no traceback, no TF lines


@pytest.mark.parametrize("args, message", [  # the job's other messages, in-process (its import is slow)
    (["--runer=DirectRunner"], "unknown flag --runer; did you mean --runner?"),  # a Beam option's name
    (["--balance=sometimes"], "--balance=sometimes is not one of duplicate, none."),
    (["--jit_compile=xl"], "--jit_compile=xl is not one of auto, xla, graph; did you mean --jit_compile=xla?"),
    (["--top_k=many"], "--top_k=many: invalid literal for int() with base 10: 'many'"),
    (["--nodedupe"], "unknown flag --nodedupe; did you mean --nodedup?"),
])
def test_label_names_the_bad_flag(args, message):
    with pytest.raises(UsageError) as error:
        options.parse(["--teacher=t", "--input=i", "--output=o", *args])
    assert str(error.value) == message


@pytest.mark.parametrize("module, args, message", [
    ("pipeline.report", ["--format=text"], "--labels=OUT_DIR is required."),
    ("student.selftrain", ["--labeled=x"], "--unlabeled and --workdir are required."),
    ("student.train", ["--model=resnet_rs_tiny"], "--labeled: is required"),
    ("teacher.evaluate", ["--teacher=t"], "--data is required"),
    ("teacher.export", ["--model=resnet_rs_tiny"], "--output is required."),
])
def test_every_cli_accepts_tf_logs(module, args, message):
    result = _cli(module, *args, "--tf_logs")
    assert result.returncode == 2 and f"{module}: error: {message}" in result.stderr.splitlines()[-1]
    assert options.parse(["--teacher=t", "--input=i", "--output=o", "--tf_logs"])[1] == []  # the job's too


def test_a_failure_at_run_time_exits_1_with_one_line(tmp_path):
    result = _cli("pipeline.report", f"--labels={tmp_path}/nothing", "--format=text")
    assert result.returncode == 1
    assert result.stderr.startswith(f"pipeline.report: error: --labels={tmp_path}/nothing has no stats.json")
    assert len(result.stderr.splitlines()) == 1


PROBE = "import os, teacher; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"


def test_tensorflow_is_quiet_unless_tf_logs_or_the_users_own_level():
    def probe(*args, **extra):
        return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300,
                              env=_environment(**extra))

    quiet = probe()
    assert quiet.stdout == "3\n" and quiet.stderr == ""
    # TensorFlow logs its start-up (oneDNN, CUDA probing) on every platform this project targets.
    loud = probe("--tf_logs")
    assert loud.stdout == "None\n" and loud.stderr != ""
    assert probe(TF_CPP_MIN_LOG_LEVEL="1").stdout == "1\n"


# A parent that quiets TensorFlow (as student.selftrain's own import does), then runs a child
# with the given arguments, as the loop runs its steps: the child inherits the environment.
CHAIN = ("import subprocess, sys; from models import cli; cli.quiet_tensorflow([]); "
         "sys.exit(subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]]).returncode)")
LEVEL_PROBE = "import os; from models import cli; cli.quiet_tensorflow(); print(os.environ.get(cli.LEVEL))"


def test_a_child_given_tf_logs_shows_them_though_its_parent_quieted_tensorflow():
    def chain(probe, *args, **extra):
        return subprocess.run([sys.executable, "-c", CHAIN, probe, *args], capture_output=True, text=True,
                              timeout=300, env=_environment(**extra))

    loud = chain(PROBE, "--tf_logs")  # the level the parent set is removed: TensorFlow's lines show
    assert loud.returncode == 0 and loud.stdout == "None\n" and loud.stderr != ""
    assert chain(LEVEL_PROBE).stdout == "3\n"  # without --tf_logs the child stays quiet
    assert chain(LEVEL_PROBE, "--tf_logs", "--notf_logs").stdout == "3\n"  # the last one wins, as in absl
    # A level the user set wins over --tf_logs, in the parent and in every child.
    assert chain(LEVEL_PROBE, "--tf_logs", TF_CPP_MIN_LOG_LEVEL="1").stdout == "1\n"
    assert chain(LEVEL_PROBE, "--tf_logs", TF_CPP_MIN_LOG_LEVEL="3").stdout == "3\n"


def test_the_shared_cli_module_and_the_report_load_no_tensorflow():
    code = ("import sys, models.cli, pipeline.report, pipeline.report.cli, pipeline.report.__main__; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout == "False\n", result.stderr[-3000:]


def test_beam_spellings_pass_through_and_unknown_flags_are_named():
    required = ["--teacher=t", "--input=i", "--output=o"]
    beam = ["--experiment=use_runner_v2", "--no_use_public_ips", "--runner", "DirectRunner",
            "--direct_num_workers", "-1"]
    assert options.parse(required + beam)[1] == beam
    with pytest.raises(UsageError) as error:
        options.parse(required + ["-x", "--dataflow_endpont=e", "--help"])  # never Beam's own help and exit
    assert str(error.value) == ("unknown flag -x; unknown flag --dataflow_endpont; did you mean --dataflow_endpoint?"
                                "; unknown flag --help")


def test_allow_random_teacher_changes_neither_run_id_nor_manifest():
    base = LabelSettings(teacher="t", input="i", output="o")
    allowed = dataclasses.replace(base, allow_random_teacher=True, progress_every_s=1, decode_threads=7,
                                  fetch_threads=3)
    for settings in ("identity_settings", "selection_settings"):
        assert getattr(allowed, settings)() == getattr(base, settings)()
        assert "allow_random_teacher" not in getattr(base, settings)()
    assert dataclasses.replace(base, min_confidence=0.5).selection_settings() != base.selection_settings()
    assert dataclasses.replace(base, temperature=2.0).identity_settings() != base.identity_settings()
    # What changes no prediction is recorded per run, not part of the index's identity.
    moved = dataclasses.replace(base, input="elsewhere/i", max_batch_size=7, teacher_strategy="tpu", tpu="local",
                                decode_memory_mb=9)
    assert moved.identity_settings() == base.identity_settings()
    assert moved.recorded_settings() != base.recorded_settings()


@pytest.fixture
def one_image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "one.png")
    return f"{folder}/*"


def test_label_refuses_a_random_teacher_without_the_flag(tiny_teacher, one_image, tmp_path):
    argv = [f"--teacher={tiny_teacher}", f"--input={one_image}", f"--output={tmp_path / 'out'}"]
    message = (f"--teacher={tiny_teacher} is a randomly initialised resnet_rs_tiny (teacher.json random_init: "
               "true): its labels would be noise. Export a trained teacher (python -m teacher.export "
               "--model_dir=RUN, or --model=NAME --weights=FILE), or pass --allow_random_teacher for a smoke test.")
    with pytest.raises(UsageError) as error:
        label.run(argv)
    assert str(error.value) == message
    result = _cli("pipeline.label", *argv)
    assert result.returncode == 2 and result.stderr == f"pipeline.label: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_random_teachers_run_is_labelled_noise_by_the_report(tiny_teacher, one_image, tmp_path, capfd, caplog):
    output = tmp_path / "out"
    label.run([f"--teacher={tiny_teacher}", f"--input={one_image}", f"--output={output}", "--min_confidence=0",
               "--num_shards=1", "--allow_random_teacher"])
    assert "is randomly initialised (--allow_random_teacher): its labels are noise" in capfd.readouterr().err
    # Beam's misleading "Resource module is not available" (pipeline/inference.py) never reaches a handler.
    assert not [r for r in caplog.records if "Resource module is not available" in r.getMessage()]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["teacher"]["random_init"] is True and "allow_random_teacher" not in manifest["settings"]
    page = tmp_path / "report.html"
    summary, text = report.build_report(str(output), str(page), output_format="text")
    assert summary["random_teacher"] and summary["warnings"][0] == RANDOM_TEACHER_WARNING
    assert text.splitlines()[2] == f"WARNING: {RANDOM_TEACHER_WARNING}"
    assert text.count(RANDOM_TEACHER_WARNING) == 1
    html = page.read_text()
    banner = html.index('<div class="banner" role="alert">WARNING: labels come from a randomly initialised teacher')
    assert banner < html.index("<h2>")


def test_the_banner_only_for_a_random_teacher_and_the_page_stays_escaped(tmp_path):
    manifest, stats = write_synthetic_run(tmp_path / "labels")
    trained = summarize("labels", manifest, stats)
    assert not trained["random_teacher"] and 'class="banner"' not in render(trained, {})
    manifest["teacher"]["random_init"] = True
    summary = summarize("labels", manifest, stats)
    page = render(summary, stats["examples"])
    assert page.count('class="banner"') == 1 and SCRIPT_CLASS not in page
    assert page.count(RANDOM_TEACHER_WARNING.split(":")[0]) == 1  # banner only, not again below

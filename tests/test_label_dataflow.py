"""Both stages of the labeling job build for Dataflow (DataflowRunner --dry_run=True: built, not submitted),
each with the workers it needs, in-process and from the README's commands."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, WorkerOptions

from pipeline import dataflow_stages, label

README = Path(__file__).resolve().parents[1] / "README.md"
REPOSITORY = README.parent
PROJECT = "example-project"
# Beam checks these before building a job: a project id, and a bucket name it accepts (gs://B is
# not one, and Beam would go looking for a default bucket over the network instead).
DATAFLOW = ["--runner=DataflowRunner", "--dry_run=True", f"--project={PROJECT}", "--region=us-central1",
            "--temp_location=gs://example-bucket/tmp", "--no_auth"]
T4 = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
SELECT_STAGES = ("ReadIndex", "Select", "WriteRecords", "WriteRejected", "Facts", "Commit")


def _label(teacher, folder, output, *flags):
    return label.run([f"--teacher={teacher}", f"--input={folder}/*", f"--output={output}", "--per_class=100",
                      "--allow_random_teacher", *DATAFLOW, *flags])


def test_full_job_builds_with_dataflow_runner(photo_folder, tiny_teacher, tmp_path, monkeypatch):
    folder, _, _ = photo_folder
    # The dry run stages nothing, but Beam still resolves credentials; none exist here.
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    results = _label(tiny_teacher, folder, tmp_path / "labels", "--dedup", "--machine_type=n1-standard-8",
                     "--experiments=use_runner_v2,no_use_multiple_sdk_containers", "--job_name=label-t4",
                     f"--dataflow_service_options={T4}", "--sdk_container_image=registry/label:gpu",
                     "--select_machine_type=n2-highmem-8", "--select_container_image=registry/label:cpu")
    predict_names = _stage_names(results.predict, depth=2)
    for stage in ("ListInputs", "AssignBuckets", "GroupUnitsByBucket", "PredictShards", "CommitIndex"):
        assert f"Predict/{stage}" in predict_names, sorted(predict_names)
    names = _stage_names(results.select)
    for stage in (*SELECT_STAGES, "Deduplicate"):
        assert stage in names, sorted(names)
    # What each built job holds: stage 1 keeps its accelerator, stage 2 asks for CPU workers.
    predict_job, select_job = results.predict.job.options, results.select.job.options
    assert predict_job.view_as(GoogleCloudOptions).dataflow_service_options == [T4]
    assert predict_job.view_as(WorkerOptions).machine_type == "n1-standard-8"
    assert "no_use_multiple_sdk_containers" in predict_job.view_as(DebugOptions).experiments
    assert dataflow_stages.accelerators(select_job) == []
    assert not select_job.view_as(GoogleCloudOptions).dataflow_service_options
    assert select_job.view_as(WorkerOptions).machine_type == "n2-highmem-8"
    assert select_job.view_as(WorkerOptions).sdk_container_image == "registry/label:cpu"
    experiments = select_job.view_as(DebugOptions).experiments  # the runner adds some of its own
    assert "use_runner_v2" in experiments and "no_use_multiple_sdk_containers" not in experiments
    assert (predict_job.view_as(GoogleCloudOptions).job_name, select_job.view_as(GoogleCloudOptions).job_name) == (
        "label-t4", "label-t4-select")
    assert not (tmp_path / "labels").exists(), "a dry run must not write anything"


def test_tpu_job_runs_stage_1_in_one_process_per_vm_and_stage_2_on_cpus(photo_folder, tiny_teacher, tmp_path,
                                                                        monkeypatch):
    folder, _, _ = photo_folder
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    results = _label(tiny_teacher, folder, tmp_path / "labels", "--worker_machine_type=ct5lp-hightpu-1t",
                     "--dataflow_service_options=worker_accelerator=type:tpu-v5-lite-podslice;topology:1x1",
                     "--teacher_strategy=tpu", "--tpu=local")
    predict_job, select_job = results.predict.job.options, results.select.job.options
    assert "no_use_multiple_sdk_containers" in predict_job.view_as(DebugOptions).experiments
    assert "no_use_multiple_sdk_containers" not in (select_job.view_as(DebugOptions).experiments or [])
    assert select_job.view_as(WorkerOptions).machine_type == "n2-standard-16"


def test_cpu_only_job_gives_both_stages_the_same_options(photo_folder, tiny_teacher, tmp_path, monkeypatch):
    folder, _, _ = photo_folder
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    results = _label(tiny_teacher, folder, tmp_path / "labels", "--machine_type=n2-standard-16",
                     "--experiments=use_runner_v2", "--select_machine_type=n2-highmem-8")
    # Beam names each job and gives it its own staging and temp directories when it builds it.
    per_job = ("job_name", "staging_location", "temp_location")
    predict_job, select_job = (
        {name: value for name, value in result.job.options.get_all_options().items() if name not in per_job}
        for result in results)
    assert select_job == predict_job
    assert select_job["machine_type"] == "n2-standard-16" and "use_runner_v2" in select_job["experiments"]


def _stage_names(result, depth=1):
    """The built job's transform names, cut to `depth` levels."""
    transforms = result.job.proto_pipeline.components.transforms.values()
    return {"/".join(transform.unique_name.split("/")[:depth]) for transform in transforms}


def readme_dataflow_commands():
    """{comment: command} of the README's Dataflow examples (python -m commands only; the first
    line of the comment above each, up to its first parenthesis)."""
    text = README.read_text()
    block = re.search(r"```\n(.*?)```", text[text.index("On Dataflow (`--setup_file`"):], re.S).group(1)
    commands, comment, current, in_comment = {}, None, "", False
    for line in block.splitlines():
        if not current and line.startswith("#"):
            if not in_comment:  # a comment's further lines continue it
                comment = line.lstrip("# ").split(" (")[0].strip()
            in_comment = True
            continue
        in_comment = False
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        if current.startswith("python -m "):
            commands[comment] = current
        current = ""
    return commands


def _runnable(command, local):
    """The README's `command` made to build here: the data flags point at `local`'s paths, the
    placeholders at names Beam accepts, and --dry_run=True --no_auth appended."""
    args = []
    for arg in shlex.split(command.replace("--project=P ", f"--project={PROJECT} ").replace("gs://B/",
                                                                                             "gs://example-bucket/")):
        name = arg.split("=", 1)[0]
        if arg == "...":
            args += [f"--{flag}={local[flag]}" for flag in ("teacher", "input", "output")]
        elif name[2:] in local:
            args.append(f"{name}={local[name[2:]]}")
        else:
            args.append(arg)
    random_teacher = ["--allow_random_teacher"] if args[2] == "pipeline.label" else []  # the tiny teacher's
    return [sys.executable, *args[1:], *random_teacher, "--dry_run=True", "--no_auth"]


def test_readme_dataflow_commands_dry_run_and_say_what_they_built(photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    # pipeline.select reads an index when it is built: one from a small local labeling run.
    label.run([f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={tmp_path / 'local'}",
               "--max_batch_size=8", "--jit_compile=graph", "--min_confidence=0", "--allow_random_teacher"])
    local = {"teacher": tiny_teacher, "input": f"{folder}/*", "output": tmp_path / "dry",
             "predictions": tmp_path / "local" / "predictions"}
    commands = readme_dataflow_commands()
    reselect = "Select again from run1's index with another threshold: no teacher, CPU workers"
    assert set(commands) == {"CPU workers", "GPU workers", "TPU workers", reselect}, commands
    environment = {**os.environ, "GOOGLE_CLOUD_PROJECT": PROJECT}
    # Concurrently: each is a Python process that mostly waits on imports.
    running = {name: subprocess.Popen(_runnable(command, local), cwd=REPOSITORY, env=environment,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, command in commands.items()}
    finished = {name: (process.communicate(timeout=300), process.returncode) for name, process in running.items()}
    for name, ((stdout, stderr), code) in finished.items():
        assert code == 0, f"{name}: exit {code}\n{stdout}\n{stderr}"
    workers = {name: re.findall(r"^  workers: (.*)$", stdout, re.M) for name, ((stdout, _), _) in finished.items()}
    cpu_workers = "machine type n2-standard-16; accelerator none (CPU workers); container image "
    assert workers["CPU workers"] == [cpu_workers + "(Beam default for this SDK version)"] * 2
    assert workers["GPU workers"] == [
        f"machine type n1-standard-8; accelerator {T4}; container image us-docker.pkg.dev/P/R/label:gpu",
        cpu_workers + "us-docker.pkg.dev/P/R/label:gpu"]
    assert workers["TPU workers"] == [
        "machine type ct5lp-hightpu-1t; accelerator worker_accelerator=type:tpu-v5-lite-podslice;topology:1x1; "
        "container image us-docker.pkg.dev/P/R/label:tpu", cpu_workers + "us-docker.pkg.dev/P/R/label:tpu"]
    for name in ("CPU workers", "GPU workers", "TPU workers"):
        (stdout, stderr), _ = finished[name]
        titles = re.findall(r"^(stage \d, \w+): DataflowRunner job \S+, dry run: not submitted$", stdout, re.M)
        assert titles == ["stage 1, inference", "stage 2, selection"], stdout
        stages = re.findall(r"^  stages: (.*)$", stdout, re.M)
        assert stages[0].startswith("Predict") and all(stage in stages[1] for stage in SELECT_STAGES), stages
        assert ("stage 2 (selection) uses no accelerator" in stderr) == (name != "CPU workers"), stderr
    (stdout, _), _ = finished[reselect]
    assert re.match(r"selection: DataflowRunner job \S+, dry run: not submitted\n  stages: .*ReadIndex.*Commit\n"
                    rf"  workers: {re.escape(cpu_workers)}\(Beam default for this SDK version\)\n$", stdout), stdout
    assert not (tmp_path / "dry").exists(), "a dry run must not write anything"

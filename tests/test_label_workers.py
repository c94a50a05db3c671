"""What one worker machine runs: one teacher per machine on accelerator workers, cores used
once on CPU workers. Three local SDK processes (FnApiRunner multi_processing) stand in for the
SDK processes of one Dataflow worker VM; the teacher appends a line to a file at every load."""

import json

import pytest

from pipeline import inference, label, workers
from test_label import assert_same_labeling

THREE_PROCESSES = ("--direct_num_workers=3", "--direct_running_mode=multi_processing")


def _label(teacher, source, output, *flags):
    # Small prediction shards: the three processes each get shards to label.
    return label.run([f"--teacher={teacher}", f"--input={source}", f"--output={output}", "--num_shards=3",
                      "--max_batch_size=4", "--images_per_prediction_shard=2", "--min_confidence=0.3",
                      "--full_distribution", "--allow_random_teacher", "--progress_every_s=0", *flags])


@pytest.fixture
def load_log(tmp_path, monkeypatch):
    path = tmp_path / "loads.txt"
    monkeypatch.setenv(inference.LOAD_LOG_ENV, str(path))  # the SDK processes inherit it
    return lambda: path.read_text().split() if path.exists() else []


def test_one_teacher_per_machine_across_three_sdk_processes(photo_folder, tiny_teacher, tmp_path, load_log):
    folder, _, _ = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "one", "--jit_compile=graph")
    assert len(load_log()) == 1
    loads = len(load_log())
    results = _label(tiny_teacher, f"{folder}/*", tmp_path / "machine", "--jit_compile=graph",
                     "--teacher_sharing=machine", *THREE_PROCESSES)
    assert len(load_log()) - loads == 1, "one teacher for the machine, whatever the processes"
    assert list(label.teacher_compile_modes(results)) == ["graph"]
    assert_same_labeling(tmp_path / "one", tmp_path / "machine")


def test_cpu_workers_load_a_teacher_per_process_with_one_compile_mode(
        photo_folder, tiny_teacher, tmp_path, load_log):
    folder, _, _ = photo_folder
    results = _label(tiny_teacher, f"{folder}/*", tmp_path / "processes", "--jit_compile=auto",
                     "--teacher_sharing=process", *THREE_PROCESSES)
    assert 2 <= len(set(load_log())) <= 3, "several processes labeled, each with its own teacher"
    # Resolved before the job by rule (a CPU teacher: graph): one mode in the whole job.
    assert list(label.teacher_compile_modes(results)) == ["graph"], label.teacher_compile_modes(results)
    _label(tiny_teacher, f"{folder}/*", tmp_path / "one", "--jit_compile=graph")
    assert_same_labeling(tmp_path / "one", tmp_path / "processes")


def test_stand_in_device_labels_like_the_teacher_alone(photo_folder, tiny_teacher, tmp_path):
    """Two batches in flight to a device change no entry and no order."""
    folder, _, _ = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "inline", "--jit_compile=graph")
    results = _label(tiny_teacher, f"{folder}/*", tmp_path / "device", "--jit_compile=graph",
                     "--stand_in_device_ms=20")
    assert_same_labeling(tmp_path / "inline", tmp_path / "device")
    for run in ("inline", "device"):
        assert json.loads((tmp_path / run / "predictions" / "index.json").read_text())["counts"]
    index_bytes = [sorted(p.read_bytes() for p in (tmp_path / run / "predictions").glob("predictions-*"))
                   for run in ("inline", "device")]
    assert index_bytes[0] == index_bytes[1], "the same entries in the same order"
    sent = results.predict.metrics().query()["distributions"]
    assert any(d.key.metric.name == "batch_sent_ms" for d in sent)


def test_sharing_and_threads_are_decided_per_machine(monkeypatch):
    monkeypatch.setattr(workers, "accelerator_on_this_machine", lambda: None)
    assert not workers.teacher_per_machine("auto", "auto")
    assert workers.teacher_per_machine("auto", "tpu") and workers.teacher_per_machine("auto", "gpu")
    assert workers.teacher_per_machine("machine", "cpu") and not workers.teacher_per_machine("process", "tpu")
    monkeypatch.setattr(workers, "accelerator_on_this_machine", lambda: "gpu")
    assert workers.teacher_per_machine("auto", "auto")
    assert workers.threads_per_process(16, cores=16) == 1
    assert workers.threads_per_process(1, cores=16) == 16
    assert workers.threads_per_process(3, cores=2) == 1
    assert workers.threads_per_process(None, cores=24) == 1  # Dataflow's default: a process per core


def test_processes_per_machine_from_the_runner_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    assert workers.processes_per_machine(PipelineOptions([])) == 1
    assert workers.processes_per_machine(PipelineOptions(list(THREE_PROCESSES))) == 3
    dataflow = ["--runner=DataflowRunner"]
    assert workers.processes_per_machine(PipelineOptions(dataflow)) is None
    assert workers.processes_per_machine(
        PipelineOptions(dataflow + ["--experiments=no_use_multiple_sdk_containers"])) == 1

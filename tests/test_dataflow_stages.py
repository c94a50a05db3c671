"""Stage 2's Beam args on Dataflow (pipeline/dataflow_stages.py): CPU workers when stage 1 asks for accelerators."""

import pytest
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, WorkerOptions)

from pipeline import dataflow_stages

DATAFLOW = ["--runner=DataflowRunner", "--project=example-project", "--region=us-central1",
            "--temp_location=gs://example-bucket/tmp"]
T4 = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
V5E = "worker_accelerator=type:tpu-v5-lite-podslice;topology:1x1"


def _options(args):
    options = PipelineOptions(args)
    return {"machine_type": options.view_as(WorkerOptions).machine_type,
            "image": options.view_as(WorkerOptions).sdk_container_image,
            "service_options": options.view_as(GoogleCloudOptions).dataflow_service_options,
            "experiments": options.view_as(DebugOptions).experiments,
            "job_name": options.view_as(GoogleCloudOptions).job_name,
            "hints": options.view_as(StandardOptions).resource_hints}


def test_gpu_workers_give_stage_2_cpu_workers_and_keep_the_rest():
    stage_1 = [*DATAFLOW, "--machine_type=n1-standard-8", "--sdk_container_image=registry/label:gpu",
               f"--dataflow_service_options={T4},enable_google_cloud_profiler", "--max_num_workers=200",
               "--experiments=use_runner_v2,no_use_multiple_sdk_containers", "--job_name=label-run1",
               "--setup_file=./setup.py"]
    stage_2 = dataflow_stages.select_args(stage_1, "n2-standard-16")
    assert dataflow_stages.accelerators(PipelineOptions(stage_1)) == [f"--dataflow_service_options={T4}"]
    assert dataflow_stages.accelerators(PipelineOptions(stage_2)) == []
    assert _options(stage_2) == {"machine_type": "n2-standard-16", "image": "registry/label:gpu",
                                 "service_options": ["enable_google_cloud_profiler"],
                                 "experiments": ["use_runner_v2"], "job_name": "label-run1-select", "hints": []}
    for kept in (*DATAFLOW, "--max_num_workers=200", "--setup_file=./setup.py",
                 "--sdk_container_image=registry/label:gpu"):
        assert kept in stage_2


def test_tpu_machine_type_and_flag_values_given_apart():
    stage_1 = [*DATAFLOW, "--worker_machine_type", "ct5lp-hightpu-1t", "--dataflow_service_options", V5E,
               "--sdk_container_image", "registry/label:tpu"]
    assert dataflow_stages.accelerators(PipelineOptions(stage_1)) == [f"--dataflow_service_options={V5E}",
                                                     "--machine_type=ct5lp-hightpu-1t"]
    stage_2 = dataflow_stages.select_args(stage_1, "n2-highmem-8", "registry/label:cpu")
    assert _options(stage_2) == {"machine_type": "n2-highmem-8", "image": "registry/label:cpu", "service_options": None,
                                 "experiments": None, "job_name": None, "hints": []}
    assert "ct5lp-hightpu-1t" not in stage_2 and "registry/label:tpu" not in stage_2


@pytest.mark.parametrize("machine_type", ["ct6e-standard-4t", "ct5lp-hightpu-1t", "a2-highgpu-1g", "a3-highgpu-8g",
                                          "g2-standard-8"])
def test_an_accelerator_machine_type_alone_is_an_accelerator(machine_type):
    stage_1 = [*DATAFLOW, f"--machine_type={machine_type}"]
    assert dataflow_stages.accelerators(PipelineOptions(stage_1)) == [f"--machine_type={machine_type}"]
    assert _options(dataflow_stages.select_args(stage_1, "n2-standard-16"))["machine_type"] == "n2-standard-16"


def test_accelerator_experiment_and_resource_hint_count_too():
    for flag in (f"--experiments={T4}", "--resource_hints=accelerator=type:nvidia-l4;count:1;install-nvidia-driver"):
        stage_2 = dataflow_stages.select_args([*DATAFLOW, flag, "--resource_hints=min_ram=16GB"], "n2-standard-16")
        assert dataflow_stages.accelerators(PipelineOptions(stage_2)) == [], flag
        assert _options(stage_2)["hints"] == ["min_ram=16GB"]


@pytest.mark.parametrize("args", [
    [*DATAFLOW, "--machine_type=n2-standard-16", "--experiments=use_runner_v2", "--job_name=cpu"],  # no accelerator
    [*DATAFLOW, "--machine_type=g1-small"],  # a shared-core CPU, not a G2 GPU VM
    ["--runner=DirectRunner", "--machine_type=a2-highgpu-1g", f"--dataflow_service_options={T4}"],  # not Dataflow
    ["--direct_num_workers=2", f"--dataflow_service_options={T4}"],  # the default runner
])
def test_stage_2_gets_stage_1s_args_without_accelerators_on_dataflow(args):
    assert dataflow_stages.select_args(args, "n2-standard-16", "registry/label:cpu") == args


def test_runner_spellings():
    for runner in ("DataflowRunner", "dataflow", "TestDataflowRunner",
                   "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"):
        assert dataflow_stages.is_dataflow(PipelineOptions([f"--runner={runner}"])), runner
    for runner in ("DirectRunner", "FlinkRunner", "PrismRunner"):
        assert not dataflow_stages.is_dataflow(PipelineOptions([f"--runner={runner}"])), runner


def test_workers_line_names_machine_accelerator_and_image():
    gpu = PipelineOptions([*DATAFLOW, "--machine_type=n1-standard-8", f"--dataflow_service_options={T4}",
                           "--sdk_container_image=registry/label:gpu"])
    assert dataflow_stages.describe_workers(gpu) == (f"machine type n1-standard-8; accelerator {T4}; "
                                                     "container image registry/label:gpu")
    assert dataflow_stages.describe_workers(PipelineOptions(DATAFLOW)) == (
        "machine type (Dataflow default); accelerator none (CPU workers); container image (Beam default for "
        "this SDK version)")
    assert "accelerator built into the machine type" in dataflow_stages.describe_workers(
        PipelineOptions([*DATAFLOW, "--machine_type=a3-highgpu-8g"]))


def test_tpu_workers_run_stage_1_in_one_sdk_process_per_vm():
    tpu = [*DATAFLOW, "--worker_machine_type=ct5lp-hightpu-1t", f"--dataflow_service_options={V5E}"]
    assert dataflow_stages.tpu_workers(PipelineOptions(tpu))
    assert _options(dataflow_stages.predict_args(tpu))["experiments"] == ["no_use_multiple_sdk_containers"]
    given = tpu + ["--experiments=use_runner_v2,no_use_multiple_sdk_containers"]
    assert dataflow_stages.predict_args(given) == given
    with pytest.raises(ValueError, match="use_multiple_sdk_containers contradicts TPU workers"):
        dataflow_stages.predict_args(tpu + ["--experiments=use_multiple_sdk_containers"])
    # GPU and CPU workers, and other runners, keep a process per vCPU (one teacher per VM on GPUs).
    gpu = [*DATAFLOW, "--machine_type=n1-standard-8", f"--dataflow_service_options={T4}"]
    assert not dataflow_stages.tpu_workers(PipelineOptions(gpu))
    for args in (gpu, DATAFLOW, ["--runner=DirectRunner", f"--dataflow_service_options={V5E}"]):
        assert dataflow_stages.predict_args(args) == args

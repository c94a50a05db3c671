"""Stage 2's Beam options when pipeline.label submits both stages to Dataflow.

Selection runs no model: on the accelerator workers stage 1 asks for, it would leave every
GPU or TPU idle (and billed) for the whole job. So when stage 1 asks Dataflow for
accelerators, `select_args` gives stage 2 the same Beam args on CPU workers instead. Stage 1's
container image also runs on CPU workers (docker/Dockerfile), so it is kept unless
--select_container_image names another.

`dry_run_lines` says what a --dry_run built instead, since such a job has no metrics or
output to report. No TensorFlow here: pipeline.label computes stage 2's options before it
loads anything.
"""

import re

from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, TestOptions, WorkerOptions)

ACCELERATOR = "worker_accelerator"  # the service option (or, in older docs, experiment) that attaches them
ACCELERATOR_HINT = "accelerator"  # the resource hint (--resource_hints=accelerator=...) that asks for them
# One SDK container per VM keeps one copy of the teacher beside one accelerator; selection
# on a CPU VM wants Dataflow's default, one container per core.
SINGLE_CONTAINER_EXPERIMENT = "no_use_multiple_sdk_containers"
# Machine types with accelerators built in: TPU VMs (ct5lp-hightpu-1t, ct6e-standard-4t, ...)
# and GPU VMs (a2-highgpu-1g, a3-highgpu-8g, a4x-..., g2-standard-8, ...). g1-small is a CPU.
ACCELERATOR_MACHINE = re.compile(r"^(ct\d|a[2-9]x?-|g[2-9]-)")
# Every spelling Beam's parser accepts for the options rewritten here (it allows no abbreviation).
MACHINE_TYPE = ("--machine_type", "--worker_machine_type")
SERVICE_OPTIONS = ("--dataflow_service_options", "--dataflow_service_option")
EXPERIMENTS = ("--experiments", "--experiment")
RESOURCE_HINTS = ("--resource_hints", "--resource_hint")
CONTAINER_IMAGE = ("--sdk_container_image", "--worker_harness_container_image")
JOB_NAME = ("--job_name",)


def is_dataflow(pipeline_options):
    """Whether PipelineOptions run on Dataflow (--runner=DataflowRunner, or a spelling Beam accepts)."""
    runner = pipeline_options.view_as(StandardOptions).runner or ""
    name = runner.rsplit(".", 1)[-1].lower()
    return name.removesuffix("runner") in ("dataflow", "testdataflow")


def _is_accelerator(entry, name=ACCELERATOR):
    return entry.split("=", 1)[0].strip() == name


def accelerators(options):
    """What in PipelineOptions `options` asks Dataflow for accelerator workers, as flags (empty: nothing)."""
    cloud, debug = options.view_as(GoogleCloudOptions), options.view_as(DebugOptions)
    machine_type = options.view_as(WorkerOptions).machine_type
    found = [f"--dataflow_service_options={entry}" for entry in cloud.dataflow_service_options or []
             if _is_accelerator(entry)]
    found += [f"--experiments={entry}" for entry in debug.experiments or [] if _is_accelerator(entry)]
    found += [f"--resource_hints={hint}" for hint in options.view_as(StandardOptions).resource_hints or []
              if _is_accelerator(hint, ACCELERATOR_HINT)]
    if machine_type and ACCELERATOR_MACHINE.match(machine_type):
        found.append(f"--machine_type={machine_type}")
    return found


def tpu_workers(options):
    """Whether PipelineOptions `options` ask Dataflow for TPU workers (a tpu-* accelerator type,
    or a TPU VM machine type such as ct5lp-hightpu-1t)."""
    return any("type:tpu" in entry.replace(" ", "") or entry.startswith("--machine_type=ct")
               for entry in accelerators(options))


def predict_args(beam_args):
    """Stage 1's Beam args: on Dataflow TPU workers, one SDK process per VM.

    On a TPU VM, TensorFlow opens the chip when it is imported, and only one process can hold
    it; Dataflow starts one SDK process per vCPU, each of which imports TensorFlow to decode and
    write entries, so the first to import it, not necessarily the one that loads the teacher,
    would own the chip. With one process per VM (its threads decode; Pillow and the reads leave
    the GIL) the teacher's process is the chip's. GPUs are claimed only when used, so GPU
    workers keep one process per vCPU and one teacher per VM (pipeline/workers.py). Raises
    ValueError when the args ask for several SDK containers on TPU workers explicitly.
    """
    beam_args, options = list(beam_args), PipelineOptions(beam_args)
    if not is_dataflow(options) or not tpu_workers(options):
        return beam_args
    experiments = options.view_as(DebugOptions).experiments or []
    if "use_multiple_sdk_containers" in experiments:
        raise ValueError("--experiments=use_multiple_sdk_containers contradicts TPU workers: a TPU chip can be "
                         "opened by one process only, so stage 1 runs one SDK process per TPU VM (it adds "
                         f"--experiments={SINGLE_CONTAINER_EXPERIMENT} itself); drop that experiment.")
    if SINGLE_CONTAINER_EXPERIMENT in experiments:
        return beam_args
    return beam_args + [f"--experiments={SINGLE_CONTAINER_EXPERIMENT}"]


def select_args(beam_args, select_machine_type, select_container_image=None):
    """Stage 2's Beam args from stage 1's `beam_args`.

    On Dataflow with accelerators (see `accelerators`): the same args without the accelerator
    (other service options, experiments and hints kept), on `select_machine_type`, in
    `select_container_image` when given, without the single-container experiment, and with
    --job_name (when given) suffixed -select. Otherwise stage 1's args, unchanged.
    """
    beam_args, options = list(beam_args), PipelineOptions(beam_args)
    if not is_dataflow(options) or not accelerators(options):
        return beam_args
    cloud, debug = options.view_as(GoogleCloudOptions), options.view_as(DebugOptions)
    rewritten = MACHINE_TYPE + SERVICE_OPTIONS + EXPERIMENTS + RESOURCE_HINTS + JOB_NAME
    if select_container_image:
        rewritten += CONTAINER_IMAGE
    args = _without(beam_args, rewritten)
    args += [f"--dataflow_service_options={entry}" for entry in cloud.dataflow_service_options or []
             if not _is_accelerator(entry)]
    args += [f"--experiments={entry}" for entry in debug.experiments or []
             if not _is_accelerator(entry) and entry != SINGLE_CONTAINER_EXPERIMENT]
    args += [f"--resource_hints={hint}" for hint in options.view_as(StandardOptions).resource_hints or []
             if not _is_accelerator(hint, ACCELERATOR_HINT)]
    args.append(f"--machine_type={select_machine_type}")
    if select_container_image:
        args.append(f"--sdk_container_image={select_container_image}")
    if cloud.job_name:
        args.append(f"--job_name={cloud.job_name}-select")
    return args


def _without(args, spellings):
    """`args` without the options spelled `spellings`, given as --name=value or as --name value."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in spellings:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return kept


def describe_workers(options):
    """One line: the workers PipelineOptions `options` ask Dataflow for (machine type, accelerator, image)."""
    worker = options.view_as(WorkerOptions)
    found = accelerators(options)
    accelerator = ", ".join(entry.split("=", 1)[1] for entry in found if not entry.startswith("--machine_type"))
    if not accelerator:
        accelerator = "built into the machine type" if found else "none (CPU workers)"
    image = worker.sdk_container_image or worker.worker_harness_container_image
    return (f"machine type {worker.machine_type or '(Dataflow default)'}; accelerator {accelerator}; "
            f"container image {image or '(Beam default for this SDK version)'}")


def built_not_submitted(pipeline_options):
    """Whether a job of these PipelineOptions is only built: DataflowRunner with --dry_run=True."""
    return bool(pipeline_options.view_as(TestOptions).dry_run) and is_dataflow(pipeline_options)


def dry_run_lines(title, result):
    """What a DataflowRunner --dry_run built, from its PipelineResult: the job (name and
    runner), its top-level stages and the workers it asks for."""
    job = result.job  # Beam's DataflowRunner keeps the built job on a dry run's result
    job_options = job.options
    pipeline = job.proto_pipeline
    transforms = pipeline.components.transforms
    stages = []
    for root in pipeline.root_transform_ids:  # a synthetic composite holding the top-level stages
        transform = transforms[root]
        stages += [transforms[part].unique_name for part in transform.subtransforms] or [transform.unique_name]
    return [f"{title}: {job_options.view_as(StandardOptions).runner} job "
            f"{job_options.view_as(GoogleCloudOptions).job_name}, dry run: not submitted",
            f"  stages: {', '.join(stages)}",
            f"  workers: {describe_workers(job_options)}"]

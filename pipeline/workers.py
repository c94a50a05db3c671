"""What one worker machine of the labeling job runs: teacher copies, processes, threads.

A Dataflow worker VM runs one Python SDK process per vCPU unless told otherwise, and each
process runs several bundles at once. Left alone, every process would load its own teacher
and size TensorFlow's thread pools to all cores. That is wrong on every kind of worker:
  TPU   a chip can be opened by one process only: the others fail or label on the CPU;
  GPU   the first TensorFlow process takes nearly all GPU memory, the others run out of it;
  CPU   N processes x N TensorFlow threads oversubscribe the cores N-fold.
So (README, "What one worker VM runs"):
  accelerator workers  one teacher per machine (`teacher_sharing` "machine"): it lives in the
                       process that first asks for it and every other SDK process calls it
                       through Beam's MultiProcessShared, as RunInference's `large_model`
                       does. The SDK processes read and decode in parallel (no shared GIL)
                       and keep two batches in flight each, so the chip never waits on one;
  CPU workers          one teacher per process (`teacher_sharing` "process"), with
                       cores / processes TensorFlow threads and decode threads each.

TF-free: the accelerator is found from its device files, since asking TensorFlow would
initialise it, and on a TPU VM the first process to do so owns the chip.
"""

import glob
import os

# Device files: NVIDIA GPUs, TPU v4/v5e chips (accel), TPU v5p/v6e chips (vfio).
_DEVICE_FILES = (("gpu", "/dev/nvidia[0-9]*"), ("tpu", "/dev/accel[0-9]*"), ("tpu", "/dev/vfio/[0-9]*"))


def accelerator_on_this_machine():
    """"gpu", "tpu" or None, from the machine's device files (no TensorFlow)."""
    for kind, pattern in _DEVICE_FILES:
        if glob.glob(pattern):
            return kind
    return None


def teacher_per_machine(sharing, strategy):
    """Whether one teacher serves the whole machine (see the module docstring)."""
    if sharing != "auto":
        return sharing == "machine"
    return strategy in ("gpu", "tpu") or accelerator_on_this_machine() is not None


def processes_per_machine(pipeline_options):
    """SDK processes the runner starts per worker machine; None: one per core (Dataflow's
    default, known only on the worker)."""
    from apache_beam.options.pipeline_options import DebugOptions, DirectOptions

    from pipeline import dataflow_stages

    if dataflow_stages.is_dataflow(pipeline_options):
        experiments = pipeline_options.view_as(DebugOptions).experiments or []
        return 1 if dataflow_stages.SINGLE_CONTAINER_EXPERIMENT in experiments else None
    direct = pipeline_options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        return direct.direct_num_workers or os.cpu_count() or 1
    return 1  # in-process runners: bundles share one process


def threads_per_process(processes, cores=None):
    """CPU threads each process may use so that processes x threads ~ cores (at least 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // (processes or cores))

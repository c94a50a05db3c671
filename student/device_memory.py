"""Does a step fit one replica's memory? A lower bound checked before anything compiles.

An XLA compile for a TPU takes minutes and then fails with out-of-memory when a replica's
share of the batch does not fit. This module refuses such a batch at start, naming the flags:
it estimates what one replica must hold at the least and compares it with the memory of one
replica (one TPU core on v2/v3, one chip on v4 and later, which TensorFlow drives as one).

The estimate is a lower bound, so it only refuses batches that cannot fit:
  - training state: every trainable weight four times in float32 (the weight, its gradient,
    SGD momentum and the EMA);
  - activations: the output of every convolution, one per image at the train image size, in
    the compute dtype (bfloat16 under --precision=bfloat16). Backpropagation needs each of
    them (each is a BatchNorm input); XLA may recompute other activations, not these.
A batch under the bound can still fail (XLA's buffers, fusions it cannot rematerialise): the
trainer then stops at its first step with a message naming the same flags.
"""

import os

import numpy as np

from models import profiling
from student.config import ConfigError

GIB = 1 << 30
# Memory per TensorFlow replica (HBM per core on v2/v3, per chip from v4 on), by the
# generation in the accelerator type a TPU VM reports (TPU_ACCELERATOR_TYPE, e.g. "v4-8").
REPLICA_MEMORY_GIB = {"v2": 8, "v3": 16, "v4": 32, "v5litepod": 16, "v5e": 16, "v5p": 95, "v6e": 32}
ACCELERATOR_TYPE_VARIABLE = "TPU_ACCELERATOR_TYPE"


def describe(size):
    """Bytes as GiB, or MiB under one GiB (a small --replica_memory_gb would read as 0 GiB)."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / (1 << 20):.0f} MiB"


def replica_memory_bytes(flag_gb, accelerator_type=None):
    """Bytes of one replica: --replica_memory_gb when given, else from the TPU's accelerator type
    (`accelerator_type`, else the environment's); None when neither says."""
    if flag_gb:
        return int(flag_gb * GIB)
    accelerator_type = accelerator_type or os.environ.get(ACCELERATOR_TYPE_VARIABLE, "")
    generation = accelerator_type.lower().split("-")[0]
    return REPLICA_MEMORY_GIB[generation] * GIB if generation in REPLICA_MEMORY_GIB else None


def footprint(model, image_size, precision):
    """(training state bytes, convolution output bytes per image) of a built Keras model."""
    graph = profiling.inference_graph(model, image_size)
    elements = sum(int(np.prod(operation.outputs[0].shape)) for operation in graph.get_operations()
                   if operation.type in ("Conv2D", "DepthwiseConv2dNative"))
    state = 4 * 4 * sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    return state, elements * (2 if precision == "bfloat16" else 4)


def check(config, replicas, memory_bytes, model):
    """Raises ConfigError when a replica's micro-batch cannot fit `memory_bytes`; returns the
    estimate {"state_bytes", "activation_bytes_per_image", "images_per_micro_batch", "bytes"}."""
    state, per_image = footprint(model, config.model_config.train_image_size, config.precision)
    images = (config.batch_size + config.pseudo_batch_size) // replicas
    micro = images // config.micro_batches
    needed = state + micro * per_image
    estimate = {"state_bytes": state, "activation_bytes_per_image": per_image, "images_per_micro_batch": micro,
                "bytes": needed}
    if needed <= memory_bytes:
        return estimate
    fits = max(0, (memory_bytes - state) // per_image)
    labeled = config.batch_size // replicas
    # The smallest micro-batch count that splits a replica's labeled share evenly and fits.
    suggestion = next((parts for parts in range(config.micro_batches + 1, labeled + 1)
                       if labeled % parts == 0 and images // parts <= fits), None)
    advice = (f"pass --micro_batches={suggestion} (same global batch and recipe, gradients summed over "
              f"{suggestion} micro-batches per step)" if suggestion else
              "no --micro_batches splits it small enough; lower --batch_size or use more replicas")
    pseudo = f" (+ {config.pseudo_batch_size} pseudo)" if config.pseudo_batch_size else ""
    raise ConfigError(
        f"--batch_size={config.batch_size}{pseudo} over {replicas} replica(s) is "
        f"{images} images a replica, {micro} per micro-batch (--micro_batches={config.micro_batches}): "
        f"{config.model} at {config.model_config.train_image_size} px needs at least "
        f"{describe(needed)} a replica ({describe(state)} of weights, gradients, momentum and EMA + "
        f"{per_image / (1 << 20):.1f} MiB of convolution outputs an image), more than its "
        f"{describe(memory_bytes)}. At most {fits} images fit a micro-batch: {advice}. (A lower bound: "
        "see student/device_memory.py.)")


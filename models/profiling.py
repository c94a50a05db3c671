"""Cost figures for a built model: FLOPs from TensorFlow's graph profiler, forward throughput."""

import time

import numpy as np
import tensorflow as tf


def inference_graph(model, image_size, batch_size=1):
    """The graph of the model's inference forward pass at a fixed input shape: traced, not run."""
    forward = tf.function(lambda images: model(images, training=False))
    return forward.get_concrete_function(tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32)).graph


def count_flops(model, image_size, batch_size=1):
    """FLOPs (2 x multiply-adds, as TF's profiler counts them) of one inference forward pass,
    summed by TF's profiler over the traced graph; nothing is executed."""
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=inference_graph(model, image_size, batch_size), options=options)
    return profile.total_float_ops // batch_size


def forward_throughput(model, image_size, batch_size=16, seconds=10.0, jit_compile=True):
    """Images/s of an XLA-compiled inference forward pass on synthetic float32 input.

    Compiles and runs twice before timing so compilation is not counted, then repeats
    full batches for at least `seconds` and at least three batches.
    """
    forward = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)
    images = tf.constant(np.random.default_rng(0).normal(
        size=(batch_size, image_size, image_size, 3)).astype(np.float32))
    for _ in range(2):
        forward(images).numpy()
    batches = 0
    start = time.perf_counter()
    while batches < 3 or time.perf_counter() - start < seconds:
        forward(images).numpy()
        batches += 1
    return batches * batch_size / (time.perf_counter() - start)

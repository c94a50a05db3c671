"""One `tf.distribute` strategy per process, chosen by name: cpu, gpu, tpu or auto."""

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "tpu")


def make_strategy(kind="auto", tpu=None):
    """The distribution strategy for `kind`.

    cpu: the default strategy (one replica). gpu: MirroredStrategy over every visible GPU.
    tpu: TPUStrategy on `tpu` (a TPU name, a grpc:// address, or "local" on a TPU VM).
    auto: tpu when `tpu` is given, else gpu when a GPU is visible, else cpu.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy={kind!r}: expected one of {STRATEGIES}.")
    if kind == "auto":
        kind = "tpu" if tpu else ("gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise ValueError("--strategy=gpu but TensorFlow sees no GPU on this machine.")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def enable_gpu_memory_growth():
    """GPU memory taken as needed rather than nearly all of it at the first op, so a process
    that only probes the GPU, or a second one, does not starve the teacher. Possible only
    before TensorFlow's runtime starts; after that the GPUs keep their setting."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            return

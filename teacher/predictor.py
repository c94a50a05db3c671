"""Batched soft-label prediction with a teacher, on CPU, GPU or TPU.

`load(path)` returns a `Teacher`, loaded once per process and shared by every thread
that asks for the same path and options (Beam runs several DoFn threads per worker).

Batches are cut to a fixed `batch_size` and the last one is padded, so the compiled step
sees one shape and never recompiles on a ragged tail. On a multi-replica strategy the
fixed batch is split evenly over replicas.
"""

import dataclasses
import os
import threading
import time

import keras
import numpy as np
import tensorflow as tf

import models
from models import hardware, preprocessing
from teacher import metadata as metadata_lib
from teacher.metadata import TeacherError

# Keras dtype policies: the mixed ones compute in 16 bits and keep float32 variables (the
# exported weights load unchanged); the logits layer and soft_labels stay float32 under both.
PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
_PACK_BYTES = 64 << 20  # the most pixel bytes copied into one packed preparation call


@dataclasses.dataclass
class Predictions:
    """Per image: top-k classes, sorted by probability, and the distribution's summary."""

    top_k_indices: np.ndarray  # int32 (N, k)
    top_k_probabilities: np.ndarray  # float32 (N, k), descending
    confidence: np.ndarray  # float32 (N,), the max probability at temperature 1
    entropy: np.ndarray  # float32 (N,), nats, of the full (temperature-scaled) distribution
    distribution: np.ndarray = None  # float32 (N, num_classes), when asked for


def soft_labels(logits, temperature, top_k):
    """Temperature softmax of float32 logits and its summaries, as TF ops (XLA-friendly).

    The confidence is the max probability at temperature 1, whatever `temperature` is:
    Noisy Student filters on the teacher's own probabilities and applies the temperature
    only to the soft targets the student learns from.
    """
    logits = tf.cast(logits, tf.float32)
    log_probabilities = tf.nn.log_softmax(logits / temperature, axis=-1)
    probabilities = tf.exp(log_probabilities)
    top = tf.math.top_k(probabilities, k=top_k, sorted=True)
    return {
        "top_k_indices": top.indices,
        "top_k_probabilities": top.values,
        "confidence": tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1),
        "entropy": -tf.reduce_sum(probabilities * log_probabilities, axis=-1),
        "distribution": probabilities,
    }


def _checked_array(images):
    """A same-size batch as a uint8 array (N, H, W, 3), or TeacherError."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise TeacherError(f"images must have shape (N, H, W, 3); got {array.shape}.")
    if array.dtype != np.uint8:
        raise TeacherError(f"images must be uint8 pixels 0-255; got dtype {array.dtype}.")
    return array


def _checked_images(images):
    """Yields each image of a sequence as uint8 (H, W, 3), decoding encoded bytes."""
    for i, image in enumerate(images):
        if isinstance(image, bytes):
            image = preprocessing.decode_image(image).numpy()
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise TeacherError(f"image {i} must be uint8 (H, W, 3) or encoded bytes; got {image.dtype} "
                               f"{image.shape}.")
        if not image.size:
            raise TeacherError(f"image {i} has no pixels: shape {image.shape}.")
        yield image


def _as_uint8_batches(images):
    """Validates `images` and yields uint8 arrays (N, H, W, 3) of one size each.

    Accepts a uint8 array (N, H, W, 3), a sequence of uint8 (H, W, 3) arrays of any sizes,
    or a sequence of encoded image bytes.
    """
    if isinstance(images, (np.ndarray, tf.Tensor)):
        yield _checked_array(images)
        return
    for image in _checked_images(images):
        yield image[np.newaxis]


def _groups(items, size):
    """Lists of `size` consecutive items (the last may be shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Teacher:
    """A loaded teacher. Use `load(path)` rather than constructing one directly."""

    def __init__(self, path, batch_size=64, precision="float32", strategy=None, jit_compile=None,
                 stand_in_device_s=0.0):
        """`jit_compile`: None or "auto" (see `_compile_step`), True/"xla" or False/"graph".

        `stand_in_device_s` > 0 models an accelerator for capacity planning and tests: each
        batch also holds a simulated device for that long, one batch at a time (`_on_device`),
        while preparation and the conversion of results run outside it, as they would beside
        a real chip. Labels are unchanged."""
        self._stand_in_device_s = stand_in_device_s
        self._device_lock, self._device_free_at = threading.Lock(), 0.0
        if precision not in PRECISIONS:
            raise TeacherError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)}.")
        self.path = path
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise TeacherError(f"batch_size {batch_size} must divide evenly over {replicas} replicas.")
        self.batch_size = batch_size
        if tf.io.gfile.exists(os.path.join(path, metadata_lib.METADATA_FILE)):
            self.metadata = metadata_lib.read(path)
            self.model = self._load_keras(precision)
            self._serving = None
        elif tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            self.metadata, self.model = None, None
            self._serving = tf.saved_model.load(path).signatures.get("serve_images")
            if self._serving is None:
                raise TeacherError(f"{path} is a SavedModel without a 'serve_images' signature "
                                   "(uint8 images -> logits); export it with `python -m teacher.export`.")
        else:
            raise TeacherError(f"{path} is not a teacher directory: no {metadata_lib.METADATA_FILE} and no "
                               "saved_model.pb (write one with `python -m teacher.export`).")
        hardware.warn_if_precision_is_slow(precision, f"teacher {path}", self.strategy)
        self.compile_mode, self.compile_timings = "saved_model", {}
        try:
            jit_compile = hardware.parse_jit_compile(jit_compile)
        except ValueError as error:
            raise TeacherError(str(error)) from error
        if self.model is not None:
            self._step = self._compile_step(jit_compile, precision)
            self._prepare_batch, self._prepare_packed = self._compile_preparation()
        self._distributed_step = tf.function(self._run_on_replicas)

    def _compile_step(self, jit_compile, precision):
        """The per-replica step, compiled with XLA or TF's graph executor (`compile_mode` says which).

        None picks: XLA with a GPU or TPU; on a CPU, whichever of the two runs this teacher's
        fixed batch faster, measured now (models/hardware.py: no CPU-flag rule predicts it).
        """
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            self.compile_mode = "xla"  # TPUStrategy compiles the whole step with XLA regardless
            return tf.function(self._replica_step)
        if self.strategy.num_replicas_in_sync > 1:
            # One XLA cluster cannot reach the variables of several local replicas ("tf.Variable
            # on a different device"), so multi-replica Mirrored runs use TF's graph executor.
            self.compile_mode = "graph"
            return tf.function(self._replica_step)
        if jit_compile is None and not hardware.has_accelerator():
            meta = self.metadata
            zeros = tf.zeros([self.batch_size, meta.eval_image_size, meta.eval_image_size, 3])
            jit_compile, step, self.compile_timings = hardware.choose_jit_compile(
                self._replica_step, (zeros, tf.constant(1.0), min(5, meta.num_classes)),
                label=f"teacher {meta.model_name} {precision} batch {self.batch_size}")
            self.compile_mode = hardware.mode_name(jit_compile)
            return step
        jit_compile = True if jit_compile is None else jit_compile
        self.compile_mode = hardware.mode_name(jit_compile)
        return tf.function(self._replica_step, jit_compile=jit_compile)

    @property
    def num_classes(self):
        return self.metadata.num_classes if self.metadata else None

    @property
    def teacher_id(self):
        return self.metadata.teacher_id if self.metadata else None

    def _load_keras(self, precision):
        meta = self.metadata
        keras_path = os.path.join(self.path, metadata_lib.KERAS_FILE)
        if not tf.io.gfile.exists(keras_path):
            raise TeacherError(f"{self.path}: {metadata_lib.KERAS_FILE} is missing.")
        with self.strategy.scope():
            # safe_mode stays on: nothing in the file can run Python code.
            saved = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
            found = int(saved.output_shape[-1])
            if found != meta.num_classes:
                raise TeacherError(f"{self.path}: teacher.json says {meta.num_classes} classes but the model "
                                   f"outputs {found}.")
            if PRECISIONS[precision] is None:
                return saved
            model = models.create(meta.model_name, meta.num_classes, dtype_policy=PRECISIONS[precision])
            model.set_weights(saved.get_weights())
            return model

    def _replica_step(self, images, temperature, top_k):
        return soft_labels(self.model(images, training=False), temperature, top_k)

    def _run_on_replicas(self, images, temperature, top_k):
        outputs = self.strategy.run(self._step, args=(images, temperature, top_k))
        return {k: self.strategy.gather(v, axis=0) for k, v in outputs.items()}

    def _compile_preparation(self):
        """Compiled eval transform (crop, bicubic resize, normalise) to float32 (N, S, S, 3).

        Why compiled: run eagerly one image at a time, this transform cost ~1.5-2 ms of CPU
        per image in op dispatch (far more than the model on small inputs), the labeling
        job's largest per-image cost. Now a list of images of any sizes is prepared in one
        compiled call per fixed batch, packed as flat pixels + (H, W) shapes, so one trace
        serves every mix of sizes (~0.13 ms per image). Crop and resize give the same bits as
        eagerly; the normalisation runs eagerly on each prepared batch (`_fixed_batches`),
        because inside a graph Grappler rewrites it and changes the last bit of some inputs
        (2.4e-7): enough to move the demo's students. So the labels equal the eager path's
        bit for bit on one CPU (measured: the demo's train records, byte-identical);
        tests/test_teacher_predictor.py holds them to it within 1e-6 on any CPU.
        """
        meta = self.metadata
        size, padding = meta.eval_image_size, meta.crop_padding

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def prepare_batch(batch):
            return preprocessing.center_crop_and_resize(batch, size, padding)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.uint8), tf.TensorSpec([None, 2], tf.int64)])
        def prepare_packed(pixels, shapes):
            ends = tf.cumsum(shapes[:, 0] * shapes[:, 1] * 3)
            starts = ends - shapes[:, 0] * shapes[:, 1] * 3
            count = tf.shape(shapes)[0]
            prepared = tf.TensorArray(tf.float32, size=count, element_shape=[size, size, 3])
            for i in tf.range(count):
                shape = tf.concat([shapes[i], tf.constant([3], tf.int64)], axis=0)
                image = tf.reshape(pixels[starts[i]:ends[i]], shape)
                prepared = prepared.write(i, preprocessing.center_crop_and_resize(image, size, padding))
            return prepared.stack()

        return prepare_batch, prepare_packed

    def _prepare_images(self, images):
        """uint8 (H, W, 3) images of any sizes -> float32 (N, S, S, 3), packed into few calls.

        Each call's packed copy of the pixels is kept under _PACK_BYTES (a larger image goes
        alone, with no packed copy), so a batch of big photos is never held twice over.
        """
        packs, pack, packed_bytes = [], [], 0
        for image in images:
            if pack and packed_bytes + image.nbytes > _PACK_BYTES:
                packs.append(pack)
                pack, packed_bytes = [], 0
            pack.append(image)
            packed_bytes += image.nbytes
        packs.append(pack)
        prepared = [self._prepare_packed(
            pack[0].reshape(-1) if len(pack) == 1 else np.concatenate([image.reshape(-1) for image in pack]),
            np.array([image.shape[:2] for image in pack], np.int64)) for pack in packs]
        return prepared[0] if len(prepared) == 1 else tf.concat(prepared, axis=0)

    def _fixed_batches(self, images):
        """Prepares `batch_size` images per compiled call; pads the last. Yields (chunk, valid)."""
        if isinstance(images, (np.ndarray, tf.Tensor)):
            array = _checked_array(images)
            groups = (array[start:start + self.batch_size] for start in range(0, len(array), self.batch_size))
            prepare = self._prepare_batch
        else:
            groups, prepare = _groups(_checked_images(images), self.batch_size), self._prepare_images
        meta = self.metadata
        for group in groups:
            chunk = preprocessing.normalize(prepare(group), meta.mean_rgb, meta.stddev_rgb)
            valid = int(chunk.shape[0])
            if valid < self.batch_size:
                padding = tf.zeros([self.batch_size - valid, *chunk.shape[1:]], chunk.dtype)
                chunk = tf.concat([chunk, padding], axis=0)
            yield chunk, valid

    def predict(self, images, temperature=1.0, top_k=5, full_distribution=False):
        """Soft labels for `images` (see `_as_uint8_batches` for accepted forms)."""
        if temperature <= 0:
            raise TeacherError(f"temperature must be > 0, got {temperature}.")
        if self._serving is not None:
            return self._predict_saved_model(images, temperature, top_k, full_distribution)
        top_k = min(top_k, self.metadata.num_classes)
        temperature = tf.constant(temperature, tf.float32)
        parts = []
        for chunk, valid in self._fixed_batches(images):
            per_replica = self.strategy.experimental_distribute_values_from_function(
                lambda context, chunk=chunk: tf.split(chunk, context.num_replicas_in_sync)[
                    context.replica_id_in_sync_group])
            outputs = self._on_device(per_replica, temperature, top_k)
            parts.append({k: v[:valid].numpy() for k, v in outputs.items()})
        return _collect(parts, full_distribution)

    def _on_device(self, per_replica, temperature, top_k):
        """One batch's step. Callers on several threads overlap their preparation and result
        conversion with each other's steps (the labeling job keeps two batches in flight)."""
        if not self._stand_in_device_s:
            return self._distributed_step(per_replica, temperature, top_k)
        # The stand-in is a device with a queue, as a chip behind TensorFlow's runtime is: a
        # batch is queued when its thread reaches this call, starts when the device is free,
        # and holds it for the stand-in's time. So the device idles only when no batch was
        # queued in time, never because a thread woke late. The step's own compute runs beside.
        with self._device_lock:
            start = max(time.perf_counter(), self._device_free_at)
            self._device_free_at = finish = start + self._stand_in_device_s
        outputs = self._distributed_step(per_replica, temperature, top_k)
        time.sleep(max(0.0, finish - time.perf_counter()))
        return outputs

    def _predict_saved_model(self, images, temperature, top_k, full_distribution):
        parts = []
        for batch in _as_uint8_batches(images):
            logits = self._serving(images=tf.constant(batch))["logits"]
            outputs = soft_labels(logits, tf.constant(temperature, tf.float32), min(top_k, logits.shape[-1]))
            parts.append({k: v.numpy() for k, v in outputs.items()})
        return _collect(parts, full_distribution)

    @property
    def compiled_step_traces(self):
        """How many times the device step was traced (1 after any number of batches)."""
        return self._step.experimental_get_tracing_count()

    @property
    def preparation_traces(self):
        """How many times the compiled preparation was traced (1 each after any sizes)."""
        return (self._prepare_batch.experimental_get_tracing_count()
                + self._prepare_packed.experimental_get_tracing_count())


def _collect(parts, full_distribution):
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Predictions(
        top_k_indices=merged["top_k_indices"].astype(np.int32),
        top_k_probabilities=merged["top_k_probabilities"],
        confidence=merged["confidence"],
        entropy=merged["entropy"],
        distribution=merged["distribution"] if full_distribution else None)


_CACHE = {}
_CACHE_LOCK = threading.Lock()


def load(path, batch_size=64, precision="float32", strategy=None, jit_compile=None, stand_in_device_s=0.0):
    """The `Teacher` at `path`, loaded once per process for each set of options."""
    try:  # "auto" and None, "xla" and True, ... are one teacher: load (and measure) it once
        mode = hardware.parse_jit_compile(jit_compile)
    except ValueError:
        mode = jit_compile  # Teacher raises the clear error
    key = (path, batch_size, precision, id(strategy), mode, stand_in_device_s)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Teacher(path, batch_size, precision, strategy, jit_compile, stand_in_device_s)
        return _CACHE[key]

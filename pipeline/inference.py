"""The teacher as a Beam RunInference ModelHandler, shared per process or per machine, and
the check of its outputs.

`TeacherModelHandler.acquire` gives a worker's DoFns their teacher: one per process (Beam's
`Shared`, as RunInference shares a model) or one per machine (Beam's `MultiProcessShared`, as
RunInference's `large_model` does; pipeline/workers.py says when and why). Either way the
DoFn calls `label(images)` on it, a method, because a MultiProcessShared proxy carries method
calls only. The teacher pads each batch to its fixed compiled batch (= --max_batch_size), so
a ragged last batch never recompiles. A TPU VM worker needs --teacher_strategy=tpu (--tpu=local);
a GPU is picked up by TensorFlow, with memory growth on.

The compile mode is given (pipeline.label resolves --jit_compile=auto by a rule before the job
starts, options.resolve_compile_mode): it is part of the prediction index's identity, so every
process of every worker, and every rerun, labels with the same one.
"""

import hashlib
import logging
import math
import os
import tempfile

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base
from apache_beam.utils import multi_process_shared

from pipeline import workers
from pipeline.elements import Rejection

# Diagnostics: when set, every teacher load appends "pid" to this file (tests count loads per machine).
LOAD_LOG_ENV = "RESNET_RS_TEACHER_LOAD_LOG"
# Where MultiProcessShared keeps its per-machine lock and address files.
_MACHINE_DIR = os.path.join(tempfile.gettempdir(), "resnet-rs-labeling")
log = logging.getLogger(__name__)


class _DropBeamsMisleadingResourceWarning(logging.Filter):
    """Beam 2.77's RunInference imports the `resource` module in one try-block with its
    optional ModelManager, which needs PyTorch; without PyTorch it logs "Resource module is
    not available for current platform" on every model load, even on Linux, which has it."""

    def filter(self, record):
        return not record.getMessage().startswith("Resource module is not available for current platform")


logging.getLogger().addFilter(_DropBeamsMisleadingResourceWarning())  # Beam logs it on the root logger


class LabelingTeacher:
    """A loaded teacher with the job's label settings: what a worker's DoFns call."""

    def __init__(self, teacher, temperature, top_k, full_distribution):
        self._teacher = teacher
        self._settings = dict(temperature=temperature, top_k=top_k, full_distribution=full_distribution)
        # One batch now compiles the step and the preparation (minutes for XLA on a TPU), at
        # load, before this worker reads: not while the first real batch waits.
        if teacher.metadata is not None:
            size = teacher.metadata.eval_image_size
            self.label([np.zeros((size, size, 3), np.uint8)])

    def label(self, images):
        """uint8 (H, W, 3) images -> (teacher.Predictions, the compile mode that labeled them)."""
        return self._teacher.predict(list(images), **self._settings), self._teacher.compile_mode


class TeacherModelHandler(base.ModelHandler):
    """uint8 (H, W, 3) pixels -> per-image soft-label dicts, with a `teacher.Teacher`.

    `sharing`: --teacher_sharing, resolved on the worker (pipeline/workers.py); `processes`: SDK
    processes per machine (None: one per core), which sizes a CPU teacher's threads;
    `job_id`: unique per job, so jobs never share a machine-wide teacher or compile mode."""

    def __init__(self, teacher_dir, *, top_k, temperature, full_distribution, max_batch_size, precision="float32",
                 jit_compile="auto", strategy="auto", tpu=None, sharing="process", processes=1, job_id="",
                 stand_in_device_ms=0.0):
        super().__init__()
        self._teacher_dir = teacher_dir
        self._top_k = top_k
        self._temperature = temperature
        self._full_distribution = full_distribution
        self._max_batch_size = max_batch_size
        self._precision = precision
        self._jit_compile = jit_compile
        self._strategy = strategy
        self._tpu = tpu
        self._sharing = sharing
        self._processes = processes
        self._job_id = job_id
        self._stand_in_device_ms = stand_in_device_ms

    @property
    def strategy(self):
        return self._strategy

    @property
    def _per_machine(self):
        """One teacher for the whole worker machine (decided there: its devices count)."""
        return workers.teacher_per_machine(self._sharing, self._strategy)

    def on_device(self):
        """Whether the teacher computes on an accelerator (or a stand-in for one), so that the
        host's work should overlap with its steps."""
        return (self._per_machine or self._stand_in_device_ms > 0 or self._strategy in ("gpu", "tpu")
                or workers.accelerator_on_this_machine() is not None)

    def cpu_threads(self):
        """Decode threads, and a CPU teacher's TensorFlow threads, per process: the machine's
        cores shared by its SDK processes (a machine-wide teacher's own process keeps them all)."""
        return workers.threads_per_process(self._processes)

    def share_model_across_processes(self):
        return self._per_machine

    def acquire(self, process_shared):
        """This process's handle on the teacher; `process_shared` is the DoFn's `shared.Shared()`."""
        if self._per_machine:
            os.makedirs(_MACHINE_DIR, exist_ok=True)
            return multi_process_shared.MultiProcessShared(
                self.load_model, tag=f"teacher-{self._digest()}", path=_MACHINE_DIR).acquire()
        return process_shared.acquire(self.load_model, tag=self.cache_tag())

    def load_model(self):
        import teacher  # deferred: workers import TensorFlow only when they load the model
        from teacher import devices

        _log_load()
        if not self._per_machine:
            _limit_tensorflow_threads(self.cpu_threads())
        devices.enable_gpu_memory_growth()
        strategy = None if self._strategy in ("auto", "cpu") and not self._tpu else \
            devices.make_strategy(self._strategy, self._tpu)
        loaded = teacher.load(self._teacher_dir, batch_size=self._max_batch_size, precision=self._precision,
                              strategy=strategy, jit_compile=self._jit_compile,
                              stand_in_device_s=self._stand_in_device_ms / 1000)
        return LabelingTeacher(loaded, self._temperature, self._top_k, self._full_distribution)

    def run_inference(self, batch, model, inference_args=None):
        return self.label_dicts(self.label(batch, model))

    @staticmethod
    def label(batch, model):
        """The teacher's outputs for a batch; thread-safe, and reports nothing (Beam's metrics
        count only in the DoFn's own thread), so it may run in a thread of the DoFn's."""
        return model.label(list(batch))

    def label_dicts(self, labels):
        """`label`'s outputs -> a soft-label dict per image; in the DoFn's thread."""
        predictions, compile_mode = labels
        # Which compile mode labeled the batch (--jit_compile=auto measures it per machine; the
        # load itself runs outside any bundle, where a counter would not be reported).
        beam.metrics.Metrics.counter("Label", f"teacher_batches_{compile_mode}").inc()
        for i in range(len(predictions.confidence)):
            yield {
                "top_k_indices": tuple(int(c) for c in predictions.top_k_indices[i]),
                "top_k_probabilities": tuple(float(p) for p in predictions.top_k_probabilities[i]),
                "confidence": float(predictions.confidence[i]),
                "entropy": float(predictions.entropy[i]),
                "distribution": predictions.distribution[i] if self._full_distribution else None,
            }

    def get_num_bytes(self, batch):
        return sum(image.nbytes for image in batch)

    def batch_elements_kwargs(self):
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}

    def cache_tag(self):
        """One loaded teacher per process and configuration (the key of Beam's Shared)."""
        return f"teacher-{self._teacher_dir}-{self._max_batch_size}-{self._precision}-{self._jit_compile}-" \
               f"{self._strategy}-{self._tpu}-{self._stand_in_device_ms}"

    def _digest(self):
        """A file-name-safe id of this job's teacher configuration."""
        return hashlib.sha256(f"{self.cache_tag()}-{self._job_id}".encode()).hexdigest()[:20]

    def get_metrics_namespace(self):
        return "Label"


def _log_load():
    path = os.environ.get(LOAD_LOG_ENV)
    if path:
        with open(path, "a") as handle:  # one short line per write: appends do not interleave
            handle.write(f"{os.getpid()}\n")


def _limit_tensorflow_threads(threads):
    """TensorFlow's pools sized to this process's share of the cores; possible only before
    TensorFlow's runtime starts (a fresh SDK process), else TensorFlow keeps its own sizes."""
    import tensorflow as tf

    if threads >= (os.cpu_count() or 1):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.info("TensorFlow already started in this process; its thread pools keep their sizes.")


def non_finite_fields(labeled):
    """Names of the teacher's outputs for one image that are NaN or infinite (empty when all are finite)."""
    found = [name for name in ("confidence", "entropy") if not math.isfinite(getattr(labeled, name))]
    if not all(math.isfinite(p) for p in labeled.top_k_probabilities):
        found.append("top_k_probabilities")
    if labeled.distribution is not None and not np.all(np.isfinite(labeled.distribution)):
        found.append("distribution")
    return found


def non_finite_rejection(labeled, fields):
    """A label with a NaN or infinite value -> a rejection, so one bad prediction costs one
    image rather than the whole job (the histograms of the stats cannot place a NaN) and the
    accounting (read = rejected + labeled) still closes."""
    values = ", ".join(f"{name} {getattr(labeled, name)}" for name in ("confidence", "entropy"))
    return Rejection(labeled.uri, f"non_finite_prediction: the teacher's {', '.join(fields)} is not finite "
                                  f"({values})", "label")

"""The teacher as a Beam RunInference ModelHandler, and the check of its outputs.

The model handler wraps `teacher.load`, which loads a teacher once per process and shares it
across the threads of that process (pipeline/predict.py acquires it through Beam's Shared,
as RunInference does). The teacher pads each batch to its fixed compiled batch
(= --max_batch_size), so a ragged last batch never recompiles. The teacher uses whatever the
worker has: a GPU is picked up by TensorFlow, a TPU VM worker needs --teacher_strategy=tpu
(--tpu=local).
"""

import logging
import math

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base

from pipeline.elements import Rejection


class _DropBeamsMisleadingResourceWarning(logging.Filter):
    """Beam 2.77's RunInference imports the `resource` module in one try-block with its
    optional ModelManager, which needs PyTorch; without PyTorch it logs "Resource module is
    not available for current platform" on every model load, even on Linux, which has it."""

    def filter(self, record):
        return not record.getMessage().startswith("Resource module is not available for current platform")


logging.getLogger().addFilter(_DropBeamsMisleadingResourceWarning())  # Beam logs it on the root logger


class TeacherModelHandler(base.ModelHandler):
    """uint8 (H, W, 3) pixels -> per-image soft-label dicts, with a `teacher.Teacher`."""

    def __init__(self, teacher_dir, *, top_k, temperature, full_distribution, max_batch_size, precision="float32",
                 jit_compile="auto", strategy="auto", tpu=None):
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

    @property
    def strategy(self):
        return self._strategy

    def load_model(self):
        import teacher  # deferred: workers import TensorFlow only when they load the model
        from teacher import devices

        strategy = None if self._strategy in ("auto", "cpu") and not self._tpu else \
            devices.make_strategy(self._strategy, self._tpu)
        return teacher.load(self._teacher_dir, batch_size=self._max_batch_size, precision=self._precision,
                            strategy=strategy, jit_compile=self._jit_compile)

    def run_inference(self, batch, model, inference_args=None):
        predictions = model.predict(list(batch), temperature=self._temperature, top_k=self._top_k,
                                    full_distribution=self._full_distribution)
        # Which compile mode labeled the batch (--jit_compile=auto measures it per worker; the
        # load itself runs outside any bundle, where a counter would not be reported).
        beam.metrics.Metrics.counter("Label", f"teacher_batches_{model.compile_mode}").inc()
        for i in range(len(batch)):
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
               f"{self._strategy}-{self._tpu}"


    def get_metrics_namespace(self):
        return "Label"


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

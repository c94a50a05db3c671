"""Label: Beam RunInference with the teacher, keyed so each label stays with its image.

The model handler wraps `teacher.load`, which loads a teacher once per process and shares it
across the DoFn threads of that process; RunInference adds its own per-process sharing on
top (and, with --share_model_across_processes, one copy per worker VM for big teachers).
Batches come from RunInference's BatchElements between --min_batch_size and
--max_batch_size; the teacher pads each to its fixed compiled batch (= --max_batch_size),
so a ragged batch never recompiles. The teacher uses whatever the worker has: a GPU is
picked up by TensorFlow, a TPU VM worker needs --teacher_strategy=tpu (--tpu=local).
"""

import logging
import math

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base

from pipeline.elements import LabeledImage, Rejection


class _DropBeamsMisleadingResourceWarning(logging.Filter):
    """Beam 2.77's RunInference imports the `resource` module in one try-block with its
    optional ModelManager, which needs PyTorch; without PyTorch it logs "Resource module is
    not available for current platform" on every model load, even on Linux, which has it."""

    def filter(self, record):
        return not record.getMessage().startswith("Resource module is not available for current platform")


logging.getLogger().addFilter(_DropBeamsMisleadingResourceWarning())  # Beam logs it on the root logger

REJECTED = "rejected"


class TeacherModelHandler(base.ModelHandler):
    """uint8 (H, W, 3) pixels -> per-image soft-label dicts, with a `teacher.Teacher`."""

    def __init__(self, teacher_dir, *, top_k, temperature, full_distribution, min_batch_size,
                 max_batch_size, precision="float32", jit_compile="auto", strategy="auto", tpu=None,
                 share_across_processes=False):
        super().__init__()
        self._teacher_dir = teacher_dir
        self._top_k = top_k
        self._temperature = temperature
        self._full_distribution = full_distribution
        self._min_batch_size = min_batch_size
        self._max_batch_size = max_batch_size
        self._precision = precision
        self._jit_compile = jit_compile
        self._strategy = strategy
        self._tpu = tpu
        self._share = share_across_processes

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
        return {"min_batch_size": self._min_batch_size, "max_batch_size": self._max_batch_size}

    def share_model_across_processes(self):
        return self._share

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


class _RejectNonFinite(beam.DoFn):
    """A label with a NaN or infinite value -> a rejection, so one bad prediction costs one
    image rather than the whole job (the histograms at Facts cannot place a NaN) and the
    accounting (read = rejected + labeled) still closes."""

    def __init__(self):
        self._rejected = beam.metrics.Metrics.counter("Label", "non_finite_prediction")

    def process(self, labeled):
        fields = non_finite_fields(labeled)
        if not fields:
            yield labeled
            return
        self._rejected.inc()
        values = ", ".join(f"{name} {getattr(labeled, name)}" for name in ("confidence", "entropy"))
        yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
            labeled.image.uri, f"non_finite_prediction: the teacher's {', '.join(fields)} is not finite "
                               f"({values})", "label"))


class Label(beam.PTransform):
    """(StoredImage, pixels) -> LabeledImage, through RunInference.

    Returns a tagged output: `labeled` (LabeledImage) and `rejected` (Rejection, for images
    whose prediction holds a NaN or an infinity)."""

    def __init__(self, handler):
        super().__init__()
        self._handler = handler

    def expand(self, images):
        return (images
                | "RunInference" >> base.RunInference(base.KeyedModelHandler(self._handler))
                | "AttachLabels" >> beam.MapTuple(lambda stored, label: LabeledImage(stored, **label))
                | "RejectNonFinite" >> beam.ParDo(_RejectNonFinite()).with_outputs(REJECTED, main="labeled"))

"""Label: Beam RunInference with the teacher, keyed so each label stays with its image.

The model handler wraps `teacher.load`, which loads a teacher once per process and shares it
across the DoFn threads of that process; RunInference adds its own per-process sharing on
top (and, with --share_model_across_processes, one copy per worker VM for big teachers).
Batches come from RunInference's BatchElements between --min_batch_size and
--max_batch_size; the teacher pads each to its fixed compiled batch (= --max_batch_size),
so a ragged batch never recompiles. The teacher uses whatever the worker has: a GPU is
picked up by TensorFlow, a TPU VM worker needs --teacher_strategy=tpu (--tpu=local).
"""

import apache_beam as beam
from apache_beam.ml.inference import base

from pipeline.elements import LabeledImage


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


class Label(beam.PTransform):
    """(StoredImage, pixels) -> LabeledImage, through RunInference."""

    def __init__(self, handler):
        super().__init__()
        self._handler = handler

    def expand(self, images):
        labeled = (images
                   | "RunInference" >> base.RunInference(base.KeyedModelHandler(self._handler))
                   | "AttachLabels" >> beam.MapTuple(lambda stored, label: LabeledImage(stored, **label)))
        return labeled

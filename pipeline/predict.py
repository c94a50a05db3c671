"""Stage 1, inference: --input -> the prediction index (pipeline/index.py), resumable.

Stages, as named in the Dataflow UI: ListInputs -> AssignShards -> GroupUnitsByShard (units of
work only: URIs and sizes, never image bytes) -> PredictShards -> CommitIndex.

PredictShards takes one prediction shard at a time and does all of its work in one DoFn call:
read each input, decode it (a thread pool: reads and Pillow decodes release the GIL), label
full batches with the teacher, and stream the entries to a temporary file that is renamed to
the shard's name when whole. A shard already published under that name (same settings, same
units: the name carries their digest) is skipped, so a killed run, rerun, recomputes only the
shards it had not published.

Why not Beam's RunInference transform (which pipeline.label used before): its batches are
formed per bundle and its outputs could only be regrouped into shards by a GroupByKey, and a
batch runner finishes every stage before the next starts, so nothing would be published
until all inference had finished: no resumption, and every label would cross a shuffle.
The teacher is still driven through RunInference's ModelHandler interface (load_model,
run_inference), shared per process through Beam's `Shared` as RunInference shares it.
"""

import collections
import concurrent.futures
import json
import math
import os
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline import decode, index, inference, records, sources
from pipeline.elements import Prediction, Rejection

PROGRESS = "progress"


def shard_count(units, per_shard):
    """A power of two with at most `per_shard` units per shard on average: inputs added to a
    rerun change the count (and so every shard's name) only when they double it."""
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(units / per_shard)))))


class _PredictShard(beam.DoFn):
    """(shard index, units) -> (the shard's file name, {"labeled": n, "rejected": m}), the
    shard published in `directory`.

    Side output PROGRESS: ("labeled" | "rejected", count) as images finish (pipeline/progress.py).
    """

    def __init__(self, directory, run_id, source, handler, max_pixels, decode_memory_mb, batch_size, threads):
        self._directory, self._run_id, self._source = directory, run_id, source
        self._handler, self._batch_size, self._threads = handler, batch_size, threads
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._shared_model, self._shared_memory = shared.Shared(), shared.Shared()
        self._computed = beam.metrics.Metrics.counter("PredictShards", "shards_computed")
        self._resumed = beam.metrics.Metrics.counter("PredictShards", "shards_resumed")
        self._decoded = beam.metrics.Metrics.counter("Decode", "decoded")
        # Per stage of the one-pass job this replaces, so the Dataflow UI still says where images go.
        self._rejected = {stage: beam.metrics.Metrics.counter(namespace, "rejected")
                          for stage, namespace in (("read", "ReadImages"), ("decode", "Decode"))}
        self._non_finite = beam.metrics.Metrics.counter("Label", "non_finite_prediction")

    def setup(self):
        self._memory = decode.shared_memory(self._shared_memory, self._decode_memory_mb)
        threads = self._threads or _auto_decode_threads(self._handler.strategy)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads else None
        self._window = 2 * self._batch_size + threads
        self._model = None  # loaded by the first shard that needs it: a finished run's rerun never loads it

    def teardown(self):
        if self._pool:
            self._pool.shutdown(wait=False)

    def process(self, item, num_shards):
        shard, units = item
        units = sorted(units, key=json.dumps)
        name = index.shard_name(shard, num_shards, index.shard_digest(self._run_id, units))
        path = FileSystems.join(self._directory, name)
        if FileSystems.exists(path):  # published by an earlier run of the same settings and inputs
            self._resumed.inc()
            counts = collections.Counter(
                "rejected" if isinstance(entry, Rejection) else "labeled" for entry in index.read_shard(path))
            for kind, count in counts.items():
                yield beam.pvalue.TaggedOutput(PROGRESS, (kind, count))
            yield name, dict(counts)
            return
        temp = FileSystems.join(self._directory, f"_tmp-{uuid.uuid4().hex}-{name}")
        counts = collections.Counter()
        with FileSystems.create(temp, mime_type="application/octet-stream") as handle:
            for entry, progress in self._entries(units):
                if entry:
                    handle.write(records.tfrecord_frame(entry))
                if progress:
                    counts[progress[0]] += progress[1]
                    yield beam.pvalue.TaggedOutput(PROGRESS, progress)
        FileSystems.rename([temp], [path])
        self._computed.inc()
        yield name, dict(counts)

    def _load(self, unit):
        """A file unit -> (Candidate, pixels) or Rejection; runs in the pool."""
        read = sources.read_image_file(unit[1], unit[2], self._source.max_bytes)
        return read if isinstance(read, Rejection) else self._decode(read)

    def _decode(self, candidate):
        try:
            pixels, _, _ = decode.decode(candidate.data, self._max_pixels, memory=self._memory, store=False,
                                         thumbnail=False)
        except decode.ImageRejected as rejection:
            return Rejection(candidate.uri, str(rejection), "decode")
        return candidate._replace(data=(decode.content_key(candidate.data), len(candidate.data))), pixels

    def _decoded_in_order(self, units):
        """Yields (Candidate with (key, size) as data, pixels) or Rejection, in unit order, with
        at most a few batches read and decoded ahead."""
        window = collections.deque()
        limit = self._window
        submit = self._pool.submit if self._pool else _now
        for unit in units:
            if unit[0] == "file":
                window.append(submit(self._load, unit))
            else:
                for read in sources.read_unit(unit, self._source):
                    window.append(read if isinstance(read, Rejection) else submit(self._decode, read))
                    while len(window) > limit:
                        yield _result(window.popleft())
            while len(window) > limit:
                yield _result(window.popleft())
        while window:
            yield _result(window.popleft())

    def _entries(self, units):
        """Yields (serialized index entry, progress or None), deterministic for given units."""
        batch = []
        for done in self._decoded_in_order(units):
            if isinstance(done, Rejection):
                self._rejected[done.stage].inc()
                yield index.rejection_entry(done), ("rejected", 1)
                continue
            self._decoded.inc()
            batch.append(done)
            if len(batch) == self._batch_size:
                yield from self._label(batch)
                batch = []
        if batch:
            yield from self._label(batch)

    def _label(self, batch):
        if self._model is None:
            self._model = self._shared_model.acquire(self._handler.load_model, tag=self._handler.cache_tag())
        labels = self._handler.run_inference([pixels for _, pixels in batch], self._model)
        labeled = 0
        for (candidate, _), label in zip(batch, labels):
            (key, size) = candidate.data
            prediction = Prediction(key, candidate.uri, candidate.offset, size, **label)
            problems = inference.non_finite_fields(prediction)
            if problems:
                self._non_finite.inc()
                yield index.rejection_entry(inference.non_finite_rejection(prediction, problems)), ("rejected", 1)
            else:
                labeled += 1
                yield index.prediction_entry(prediction), None
        if labeled:
            yield b"", ("labeled", labeled)  # an empty entry is never written (see process)


def _result(pending):
    return pending.result() if isinstance(pending, concurrent.futures.Future) else pending


def _now(function, *args):
    """What the pool's submit would return, computed in this thread (no decode threads)."""
    return function(*args)


def _auto_decode_threads(strategy):
    """--decode_threads=0: this worker's CPU count when the teacher runs on an accelerator,
    which threads decoding ahead keep fed; none (decode in the DoFn's thread) when it runs on
    this CPU, where decode threads would only contend with TensorFlow's own threads for the
    cores the teacher already uses (measured on a 2-core AMD EPYC, resnet_rs_50 at 160 px, 5,000
    photo crops: stage 1 labeled 19 img/s with two decode threads, 34 img/s decoding inline)."""
    import tensorflow as tf

    accelerated = strategy in ("gpu", "tpu") or any(tf.config.list_physical_devices(kind) for kind in ("GPU", "TPU"))
    return (os.cpu_count() or 1) if accelerated else 0


class _CommitIndex(beam.DoFn):
    """[(shard name, counts)] -> writes index.json (last) and removes shards of other runs; yields it."""

    def __init__(self, directory, index_base):
        self._directory, self._index_base = directory, index_base

    def process(self, shards, num_shards):
        names = sorted(name for name, _ in shards)
        counts = collections.Counter()
        for _, shard_counts in shards:
            counts.update(shard_counts)
        document = dict(self._index_base, num_shards=num_shards, shards=names,
                        counts={"read": counts["labeled"] + counts["rejected"], "labeled": counts["labeled"],
                                "rejected": counts["rejected"]})
        index.write_index(self._directory, document, keep=names)
        yield document


class Predict(beam.PTransform):
    """pbegin -> the committed index document (one element); progress in `self.progress`."""

    def __init__(self, directory, run_id, index_base, source, handler, max_pixels, decode_memory_mb, batch_size,
                 images_per_shard, threads):
        super().__init__()
        self._directory, self._run_id, self._index_base = directory, run_id, index_base
        self._source, self._handler = source, handler
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._batch_size, self._images_per_shard, self._threads = batch_size, images_per_shard, threads
        self.listing = sources.ListUnits(source)
        self.progress = None

    def expand(self, pbegin):
        units = pbegin | "ListInputs" >> self.listing
        # A file unit is one image; a TFRecord file or TFDS range holds many, so each is a shard.
        per_shard = self._images_per_shard if self._source.input_format in ("images", "list") else 1
        num_shards = beam.pvalue.AsSingleton(
            units | "CountUnits" >> beam.combiners.Count.Globally()
            | "ShardCount" >> beam.Map(shard_count, per_shard))
        predicted = (units
                     | "AssignShards" >> beam.Map(
                         lambda unit, n: (records.shard_of(sources.unit_id(unit), n), unit), num_shards)
                     | "GroupUnitsByShard" >> beam.GroupByKey()
                     | "PredictShards" >> beam.ParDo(
                         _PredictShard(self._directory, self._run_id, self._source, self._handler, self._max_pixels,
                                       self._decode_memory_mb, self._batch_size, self._threads),
                         num_shards).with_outputs(PROGRESS, main="names"))
        self.progress = predicted[PROGRESS]
        return (predicted.names
                | "ShardNames" >> beam.combiners.ToList()
                | "CommitIndex" >> beam.ParDo(_CommitIndex(self._directory, self._index_base), num_shards))

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
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline import decode, index, inference, records, sources
from pipeline.elements import Candidate, Prediction, Rejection

PROGRESS = "progress"


def shard_count(units, per_shard):
    """A power of two with at most `per_shard` units per shard on average: inputs added to a
    rerun change the count (and so every shard's name) only when they double it."""
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(units / per_shard)))))


class _PredictShard(beam.DoFn):
    """(shard index, units) -> (the shard's file name, {"labeled": n, "rejected": m}), the
    shard published in `directory`.

    Side output PROGRESS: ("labeled" | "rejected", count) as images finish (pipeline/progress.py).

    Three kinds of work overlap, so that an accelerator never waits on the host:
      reads     --read_threads in flight (I/O: independent of the CPU count);
      decodes   in --decode_threads (default: the process's share of the cores) with a teacher on a
                device; in the DoFn's thread with a CPU teacher, whose own threads use the cores
                (measured on a 2-core AMD EPYC, resnet_rs_50 at 160 px, 5,000 photo crops: stage 1
                labeled 19 img/s with two decode threads, 34 img/s decoding inline);
      batches   with a teacher on a device, two in flight from this process (`_IN_FLIGHT`): while
                the device runs one, the host prepares the next and converts the last.
    The entries' order in the shard does not depend on any of this (`_entries`).
    """

    def __init__(self, directory, run_id, source, handler, max_pixels, decode_memory_mb, batch_size, read_threads,
                 decode_threads):
        self._directory, self._run_id, self._source = directory, run_id, source
        self._handler, self._batch_size = handler, batch_size
        self._read_threads, self._decode_threads = read_threads, decode_threads
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._shared_model, self._shared_memory, self._shared_pools = shared.Shared(), shared.Shared(), shared.Shared()
        self._computed = beam.metrics.Metrics.counter("PredictShards", "shards_computed")
        self._resumed = beam.metrics.Metrics.counter("PredictShards", "shards_resumed")
        self._decoded = beam.metrics.Metrics.counter("Decode", "decoded")
        # Per stage of the one-pass job this replaces, so the Dataflow UI still says where images go.
        self._rejected = {stage: beam.metrics.Metrics.counter(namespace, "rejected")
                          for stage, namespace in (("read", "ReadImages"), ("decode", "Decode"))}
        self._non_finite = beam.metrics.Metrics.counter("Label", "non_finite_prediction")
        # When batches went to the teacher and came back (ms since the epoch): min and max over
        # every process give the span in which the teacher was fed (benchmarks/stand_in_device.py).
        self._batch_sent = beam.metrics.Metrics.distribution("Label", "batch_sent_ms")
        self._batch_done = beam.metrics.Metrics.distribution("Label", "batch_done_ms")

    def setup(self):
        self._memory = decode.shared_memory(self._shared_memory, self._decode_memory_mb)
        on_device = self._handler.on_device()
        if on_device:
            from teacher import devices

            # A process that is not the teacher's and still touches the GPU takes only what it uses.
            devices.enable_gpu_memory_growth()
        decode_threads = self._decode_threads or (self._handler.cpu_threads() if on_device else 0)
        sizes = (self._read_threads, decode_threads, _IN_FLIGHT if on_device else 0)
        # One set of pools per process, whatever number of bundles (DoFn instances) it runs at once.
        pools = self._shared_pools.acquire(lambda: _Pools(*sizes), tag=f"pools-{sizes}")
        self._pools, self._reads, self._decodes, self._inference = pools, pools.reads, pools.decodes, pools.inference
        # Reads in flight, plus the batches decoded ahead of the teacher.
        self._window = self._read_threads + 2 * self._batch_size
        self._model = None  # loaded by the first shard that needs it: a finished run's rerun never loads it

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
        if self._model is None:
            # Before this process reads anything: the machine's teacher, where it is hosted here,
            # is the first user of the device.
            self._model = self._handler.acquire(self._shared_model)
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

    def _read(self, unit):
        """A file unit -> Candidate or Rejection, then its decode: in the decode pool (a Future)
        when there is one, else done later in the DoFn's thread. Runs in the read pool."""
        read = sources.read_image_file(unit[1], unit[2], self._source.max_bytes)
        if isinstance(read, Rejection) or not self._decodes:
            return read
        return self._decodes.submit(self._decode, read)

    def _decode(self, candidate):
        try:
            pixels, _, _ = decode.decode(candidate.data, self._max_pixels, memory=self._memory, store=False,
                                         thumbnail=False)
        except decode.ImageRejected as rejection:
            return Rejection(candidate.uri, str(rejection), "decode")
        return candidate._replace(data=(decode.content_key(candidate.data), len(candidate.data))), pixels

    def _settle(self, pending):
        """A read or decode in flight -> (Candidate with (key, size) as data, pixels) or Rejection."""
        done = _result(_result(pending))
        return self._decode(done) if isinstance(done, Candidate) else done  # a Candidate: read, not decoded

    def _decoded_in_order(self, units):
        """Yields (Candidate with (key, size) as data, pixels) or Rejection, in unit order, with
        at most `_window` units read or decoded ahead."""
        window = collections.deque()
        limit = self._window
        for unit in units:
            if unit[0] == "file":
                window.append(self._reads.submit(self._read, unit))
            else:  # a TFRecord file or TFDS range: read as a stream in this thread
                for read in sources.read_unit(unit, self._source):
                    window.append(read if isinstance(read, Rejection) or not self._decodes
                                  else self._decodes.submit(self._decode, read))
                    while len(window) > limit:
                        yield self._settle(window.popleft())
            while len(window) > limit:
                yield self._settle(window.popleft())
        while window:
            yield self._settle(window.popleft())

    def _entries(self, units):
        """Yields (serialized index entry, progress or None), in an order fixed by the units
        alone: rejections and labeled batches queue in input order, and the queue is emptied
        from its front, however many batches are in flight."""
        queue, batch = collections.deque(), []
        in_flight = _IN_FLIGHT if self._inference else 0
        for done in self._decoded_in_order(units):
            if isinstance(done, Rejection):
                self._rejected[done.stage].inc()
                queue.append([(index.rejection_entry(done), ("rejected", 1))])
            else:
                self._decoded.inc()
                batch.append(done)
                if len(batch) == self._batch_size:
                    queue.append(self._send(batch))
                    batch = []
            yield from self._drain(queue, in_flight)
        if batch:
            queue.append(self._send(batch))
        yield from self._drain(queue, 0)

    def _send(self, batch):
        """A batch to the teacher: a Future in the inference pool, or (no pool) its labels now."""
        self._batch_sent.update(int(time.time() * 1000))
        pixels = [pixels for _, pixels in batch]
        if self._inference:
            return batch, self._inference.submit(self._handler.label, pixels, self._model)
        return batch, self._handler.label(pixels, self._model)

    def _drain(self, queue, in_flight):
        """Yields the queue's entries from its front, leaving at most `in_flight` batches pending."""
        while queue and (isinstance(queue[0], list) or sum(isinstance(item, tuple) for item in queue) > in_flight):
            item = queue.popleft()
            yield from item if isinstance(item, list) else self._labeled(*item)

    def _labeled(self, batch, labels):
        labels = _result(labels)
        self._batch_done.update(int(time.time() * 1000))
        labeled = 0
        for (candidate, _), label in zip(batch, self._handler.label_dicts(labels)):
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


# Batches each process keeps in flight to a teacher on a device: one running, one ready.
_IN_FLIGHT = 2


class _Pools:
    """A process's thread pools: reads, decodes (none: in the DoFn's thread) and batches in
    flight to the teacher (none: labeled in the DoFn's thread). Threads end with the pools."""

    def __init__(self, reads, decodes, in_flight):
        def pool(threads, name):
            return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name) if threads else None

        self.reads, self.decodes, self.inference = pool(reads, "read"), pool(decodes, "decode"), \
            pool(in_flight, "teacher")


def _result(pending):
    return pending.result() if isinstance(pending, concurrent.futures.Future) else pending


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
                 images_per_shard, read_threads, decode_threads):
        super().__init__()
        self._directory, self._run_id, self._index_base = directory, run_id, index_base
        self._source, self._handler = source, handler
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._batch_size, self._images_per_shard = batch_size, images_per_shard
        self._read_threads, self._decode_threads = read_threads, decode_threads
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
                                       self._decode_memory_mb, self._batch_size, self._read_threads,
                                       self._decode_threads),
                         num_shards).with_outputs(PROGRESS, main="names"))
        self.progress = predicted[PROGRESS]
        return (predicted.names
                | "ShardNames" >> beam.combiners.ToList()
                | "CommitIndex" >> beam.ParDo(_CommitIndex(self._directory, self._index_base), num_shards))

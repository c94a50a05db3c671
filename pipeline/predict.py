"""Stage 1, inference: --input -> the prediction index (pipeline/index.py), resumable.

Stages, as named in the Dataflow UI: ListInputs -> AssignBuckets -> GroupUnitsByBucket (units
of work only: URIs and sizes, never image bytes) -> PredictShards -> CommitIndex.

PredictShards takes one bucket at a time (pipeline/buckets.py: how the index grows) and does
all of its work in one DoFn call: it keeps one unit per path (a list may reach a path twice:
sources.one_unit_per_path), finds which of the bucket's units the index already
holds (reading nothing when the bucket is unchanged), then reads each new input, decodes it
(a thread pool: reads and Pillow decodes release the GIL), labels full batches with the
teacher, and streams the entries to a temporary file renamed to the shard's name when whole.
A shard already published under that name (same index, same new units: the name carries
their digest) is kept, so a killed run, rerun, predicts only what it had not published.

Why not Beam's RunInference transform (which pipeline.label used before): its batches are
formed per bundle and its outputs could only be regrouped into shards by a GroupByKey, and a
batch runner finishes every stage before the next starts, so nothing would be published
until all inference had finished: no resumption, and every label would cross a shuffle.
The teacher is still driven through RunInference's ModelHandler interface (load_model,
run_inference), shared per process through Beam's `Shared` as RunInference shares it.
"""

import collections
import concurrent.futures
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline import buckets, decode, index, inference, records, sources
from pipeline.elements import Candidate, Prediction, Rejection

PROGRESS = "progress"


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
                 decode_threads, previous=None):
        self._directory, self._run_id, self._source = directory, run_id, source
        self._previous_id = buckets.fingerprint(previous)  # the document itself is read in setup
        self._handler, self._batch_size = handler, batch_size
        self._read_threads, self._decode_threads = read_threads, decode_threads
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._shared_model, self._shared_memory, self._shared_pools = shared.Shared(), shared.Shared(), shared.Shared()
        self._computed = beam.metrics.Metrics.counter("PredictShards", "shards_computed")
        self._resumed = beam.metrics.Metrics.counter("PredictShards", "shards_resumed")
        self._unchanged = beam.metrics.Metrics.counter("PredictShards", "buckets_unchanged")
        self._decoded = beam.metrics.Metrics.counter("Decode", "decoded")
        # Per stage of the one-pass job this replaces, so the Dataflow UI still says where images go.
        self._rejected = {stage: beam.metrics.Metrics.counter(namespace, "rejected")
                          for stage, namespace in (("read", "ReadImages"), ("decode", "Decode"))}
        self._non_finite = beam.metrics.Metrics.counter("Label", "non_finite_prediction")
        # Images the teacher labeled: what a rerun over a grown list should pay for, and no more.
        self._images = beam.metrics.Metrics.counter("Label", "images_predicted")
        self._unit_lists = beam.metrics.Metrics.counter("PredictShards", "unit_lists_read")
        # When batches went to the teacher and came back (ms since the epoch): min and max over
        # every process give the span in which the teacher was fed (benchmarks/stand_in_device.py).
        self._batch_sent = beam.metrics.Metrics.distribution("Label", "batch_sent_ms")
        self._batch_done = beam.metrics.Metrics.distribution("Label", "batch_done_ms")

    def setup(self):
        self._previous = buckets.previous_index(self._directory, self._previous_id)
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

    def process(self, item, num_buckets):
        bucket, units = item
        units = sorted(sources.one_unit_per_path(unit for unit in units if unit is not None), key=buckets.unit_key)
        plan = buckets.plan_bucket(self._directory, self._previous, bucket, num_buckets, units)
        parts = list(plan.parts)
        for _, _, labeled, rejected, _ in parts:  # already in the index: done, for the progress line
            yield from (beam.pvalue.TaggedOutput(PROGRESS, (kind, count))
                        for kind, count in (("labeled", labeled), ("rejected", rejected)) if count)
        if plan.unchanged:
            self._unchanged.inc()
        self._unit_lists.inc(plan.lists_read)
        if plan.new_units:
            parts.append((yield from self._shard(bucket, num_buckets, plan.new_units)))
        yield bucket, {"digest": plan.digest, "parts": parts}

    def _shard(self, bucket, num_buckets, units):
        """Predicts `units` into a new shard of `bucket` (or finds it published by a killed run of
        the same list); returns its part of the bucket's record."""
        keys = [buckets.unit_key(unit) for unit in units]
        name = index.shard_name(bucket, num_buckets, index.shard_digest(self._run_id, keys))
        path = FileSystems.join(self._directory, name)
        if FileSystems.exists(path):  # its unit list was written before it, so it is there too
            self._resumed.inc()
            rows = buckets.read_units(self._directory, name)
            resumed = True
        else:
            rows = yield from self._predict(path, units, keys)  # reports its progress as it goes
            self._computed.inc()
            resumed = False
        labeled, rejected = sum(row[1] for row in rows), sum(row[2] for row in rows)
        if resumed:
            yield from (beam.pvalue.TaggedOutput(PROGRESS, (kind, count))
                        for kind, count in (("labeled", labeled), ("rejected", rejected)) if count)
        return [name, len(rows), labeled, rejected, None]

    def _predict(self, path, units, keys):
        """Streams the entries of `units` to a temporary file renamed to `path` when whole, after
        the unit list (with each unit's counts); returns that list."""
        if self._model is None:
            # Before this process reads anything: the machine's teacher, where it is hosted here,
            # is the first user of the device.
            self._model = self._handler.acquire(self._shared_model)
        directory, name = path.rsplit("/", 1)
        temp = FileSystems.join(directory, f"_tmp-{uuid.uuid4().hex}-{name}")
        per_unit = [[key, 0, 0] for key in keys]
        progress = collections.Counter()
        with FileSystems.create(temp, mime_type="application/octet-stream") as handle:
            for entry, kind, unit in self._entries(units):
                handle.write(records.tfrecord_frame(entry))
                per_unit[unit][1 if kind == "labeled" else 2] += 1
                progress[kind] += 1
                if sum(progress.values()) >= self._batch_size:  # progress moves by teacher batch
                    yield from (beam.pvalue.TaggedOutput(PROGRESS, item) for item in progress.items())
                    progress.clear()
        yield from (beam.pvalue.TaggedOutput(PROGRESS, item) for item in progress.items())
        buckets.write_json(FileSystems.join(directory, buckets.units_name(name)), {"units": per_unit})
        FileSystems.rename([temp], [path])
        return [tuple(row) for row in per_unit]

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
        """Yields (unit position, (Candidate with (key, size) as data, pixels) or Rejection), in
        unit order, with at most `_window` units read or decoded ahead."""
        window = collections.deque()
        limit = self._window
        for position, unit in enumerate(units):
            if unit[0] == "file":
                window.append((position, self._reads.submit(self._read, unit)))
            else:  # a TFRecord file or TFDS range: read as a stream in this thread
                for read in sources.read_unit(unit, self._source):
                    window.append((position, read if isinstance(read, Rejection) or not self._decodes
                                   else self._decodes.submit(self._decode, read)))
                    while len(window) > limit:
                        yield self._settled(window.popleft())
            while len(window) > limit:
                yield self._settled(window.popleft())
        while window:
            yield self._settled(window.popleft())

    def _settled(self, item):
        position, pending = item
        return position, self._settle(pending)

    def _entries(self, units):
        """Yields (serialized index entry, "labeled" | "rejected", unit position), in an order
        fixed by the units alone: rejections and labeled batches queue in input order, and the
        queue is emptied from its front, however many batches are in flight."""
        queue, batch = collections.deque(), []
        in_flight = _IN_FLIGHT if self._inference else 0
        for position, done in self._decoded_in_order(units):
            if isinstance(done, Rejection):
                self._rejected[done.stage].inc()
                queue.append([(index.rejection_entry(done), "rejected", position)])
            else:
                self._decoded.inc()
                batch.append((position, *done))
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
        pixels = [pixels for _, _, pixels in batch]
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
        self._images.inc(len(batch))
        for (position, candidate, _), label in zip(batch, self._handler.label_dicts(labels)):
            (key, size) = candidate.data
            prediction = Prediction(key, candidate.uri, candidate.offset, size, **label)
            problems = inference.non_finite_fields(prediction)
            if problems:
                self._non_finite.inc()
                yield index.rejection_entry(inference.non_finite_rejection(prediction, problems)), "rejected", position
            else:
                yield index.prediction_entry(prediction), "labeled", position


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
    """[(bucket, its record)] -> writes index.json (last) and removes the files it no longer
    needs (shards of another index, or of a killed run over another list); yields it."""

    def __init__(self, directory, index_base, previous, run, claim):
        self._directory, self._index_base, self._previous_id = directory, index_base, buckets.fingerprint(previous)
        self._run, self._claim = run, claim

    def process(self, bucket_records, num_buckets):
        previous = buckets.previous_index(self._directory, self._previous_id)
        document = buckets.index_document(self._index_base, previous, dict(bucket_records), num_buckets, self._run)
        index.write_index(self._directory, document, keep=buckets.referenced_files(document), claim=self._claim)
        yield document


class Predict(beam.PTransform):
    """pbegin -> the committed index document (one element); progress in `self.progress`.

    `previous`: the index.json this run grows (None: a new index); `run`: what index.json
    records about this run (its input and the settings that are not the index's identity);
    `claim`: this job's claim on the directory (index.claim)."""

    def __init__(self, directory, run_id, index_base, source, handler, max_pixels, decode_memory_mb, batch_size,
                 images_per_shard, read_threads, decode_threads, previous=None, run=None, claim=None):
        super().__init__()
        self._directory, self._run_id, self._index_base = directory, run_id, index_base
        self._previous, self._run, self._claim = previous, run or {}, claim
        self._source, self._handler = source, handler
        self._max_pixels, self._decode_memory_mb = max_pixels, decode_memory_mb
        self._batch_size, self._images_per_shard = batch_size, images_per_shard
        self._read_threads, self._decode_threads = read_threads, decode_threads
        self.listing = sources.ListUnits(source)
        self.progress = None

    def expand(self, pbegin):
        units = pbegin | "ListInputs" >> self.listing
        # A file unit is one image; a TFRecord file or TFDS range holds many, so each is a shard.
        per_bucket = self._images_per_shard if self._source.input_format in ("images", "list") else 1
        previous_count = self._previous["num_buckets"] if self._previous else None
        num_buckets = beam.pvalue.AsSingleton(
            units | "CountUnits" >> beam.combiners.Count.Globally()
            | "BucketCount" >> beam.Map(buckets.bucket_count, per_bucket, previous_count))
        # Every bucket gets a group, so one whose units all left the list still reports it.
        every_bucket = (pbegin
                        | "One" >> beam.Create([None])
                        | "AllBuckets" >> beam.FlatMap(lambda _, n: [(b, None) for b in range(n)], num_buckets))
        keyed = units | "AssignBuckets" >> beam.Map(lambda unit, n: (buckets.bucket_of(unit, n), unit), num_buckets)
        predicted = ((keyed, every_bucket)
                     | "WithEveryBucket" >> beam.Flatten()
                     | "GroupUnitsByBucket" >> beam.GroupByKey()
                     | "PredictShards" >> beam.ParDo(
                         _PredictShard(self._directory, self._run_id, self._source, self._handler, self._max_pixels,
                                       self._decode_memory_mb, self._batch_size, self._read_threads,
                                       self._decode_threads, self._previous),
                         num_buckets).with_outputs(PROGRESS, main="buckets"))
        self.progress = predicted[PROGRESS]
        return (predicted.buckets
                | "BucketRecords" >> beam.combiners.ToList()
                | "CommitIndex" >> beam.ParDo(
                    _CommitIndex(self._directory, self._index_base, self._previous, self._run, self._claim),
                    num_buckets))

"""Deterministic sharded files in a staging directory: train records and rejection lines.

Each item goes to the shard `records.shard_of(identity)`; every shard is grouped, sorted by
identity and written in one pass, so the same inputs give byte-identical shards on any
runner and any number of workers. All shards are written, empty ones included, so the
`-of-NNNNN` names never lie.

Train shards: only the index entry and copy index cross the GroupByKey, packed into about
170 bytes per record (`elements.pack`, which says why); the writer fetches each record's
image bytes itself (pipeline/fetch.py: parallel reads, a bounded window ahead) and streams
the records to the file in sorted order, so no image bytes cross a shuffle and no shard is
ever held whole in memory. The shard count comes from the data: the selected inputs' bytes
(copies included) over --target_shard_mb, unless --num_shards fixes it; pipeline.select
computes it in a pass of its own (its _CountTrainShards says why). Rejection lines are small
and are written as they are grouped.
"""

import math

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline import decode, elements, fetch, records
from pipeline.elements import Rejection

UNAVAILABLE = "unavailable"


def train_shard_count(total_bytes, target_mb):
    """Enough shards of about --target_shard_mb each (--num_shards, when set, replaces this)."""
    return max(1, math.ceil(total_bytes / (target_mb << 20)))


def _grouped_by_shard(keyed, every_shard):
    """(shard, item) and (shard, None) for every shard -> (shard, items and one None): every
    shard gets a group, so an empty shard is written too."""
    return (keyed, every_shard) | "WithEmptyShards" >> beam.Flatten() | "GroupShards" >> beam.GroupByKey()


class _WriteTrainShard(beam.DoFn):
    """(shard, [packed (Prediction, copy_index) or None]) -> (file name, records written);
    a record whose input cannot be fetched goes to UNAVAILABLE as (Prediction, copy_index, reason)."""

    def __init__(self, directory, source, max_pixels, max_side, decode_memory_mb, threads):
        self._directory, self._source = directory, source
        self._max_pixels, self._max_side, self._decode_memory_mb = max_pixels, max_side, decode_memory_mb
        self._threads = fetch.parallel_reads(source, threads)
        self._shared_memory = shared.Shared()
        self._written = beam.metrics.Metrics.counter("WriteRecords", "train_written")
        self._unavailable = beam.metrics.Metrics.counter("WriteRecords", "unavailable")

    def setup(self):
        self._memory = decode.shared_memory(self._shared_memory, self._decode_memory_mb)

    def _stored(self, item):
        prediction, _ = item
        return fetch.stored_image(prediction, self._source, self._max_pixels, self._max_side, self._memory)

    def process(self, shard, num_shards):
        index, items = shard
        ordered = sorted(item for item in items if item is not None)  # packed: sorts by record key
        unpacked = (elements.unpack(packed) for packed in ordered)  # one at a time, as they are fetched
        name = records.shard_name(records.TRAIN_PREFIX, index, num_shards, records.TRAIN_SUFFIX)
        count = 0
        with FileSystems.create(FileSystems.join(self._directory, name),
                                mime_type="application/octet-stream") as handle:
            for item, stored in fetch.fetched_in_order(unpacked, self._stored, self._threads, 2 * self._threads):
                prediction, copy_index = item
                if isinstance(stored, fetch.FetchFailed):
                    self._unavailable.inc()
                    yield beam.pvalue.TaggedOutput(UNAVAILABLE, (prediction, copy_index, str(stored)))
                    continue
                handle.write(records.tfrecord_frame(records.to_example(prediction, stored, copy_index)))
                count += 1
        self._written.inc(count)
        yield name, count


class WriteTrainShards(beam.PTransform):
    """(Prediction, copy_index) -> {"files": (name, count) per shard, UNAVAILABLE: ...}.
    `shard_count`: a PCollection of one int, computed without these records (see
    pipeline.select's _CountTrainShards for why)."""

    def __init__(self, directory, source, max_pixels, max_side, decode_memory_mb, threads, shard_count):
        super().__init__()
        self._writer = _WriteTrainShard(directory, source, max_pixels, max_side, decode_memory_mb, threads)
        self._shard_count = shard_count

    def expand(self, written):
        num_shards = beam.pvalue.AsSingleton(self._shard_count)
        every_shard = (written.pipeline
                       | "One" >> beam.Create([None])
                       | "AllShards" >> beam.FlatMap(lambda _, n: [(index, None) for index in range(n)], num_shards))
        keyed = (written
                 | "Pack" >> beam.MapTuple(elements.pack)
                 | "KeyByShard" >> beam.Map(
                     lambda packed, n: (records.shard_of(elements.packed_key(packed), n), packed), num_shards))
        shards = (_grouped_by_shard(keyed, every_shard)
                  | "WriteShard" >> beam.ParDo(self._writer, num_shards).with_outputs(UNAVAILABLE, main="files"))
        return {"files": shards.files, UNAVAILABLE: shards[UNAVAILABLE]}


class _WriteRejectionShard(beam.DoFn):
    def __init__(self, directory, num_shards):
        self._directory, self._num_shards = directory, num_shards

    def process(self, shard):
        index, lines = shard
        ordered = sorted(line for line in lines if line is not None)
        name = records.shard_name(records.REJECTED_PREFIX, index, self._num_shards, records.REJECTED_SUFFIX)
        count = records.write_shard(FileSystems.join(self._directory, name), ordered, framed=False)
        yield name, count


def unavailable_rejection(item):
    prediction, copy_index, reason = item
    return Rejection(prediction.uri, f"unavailable: {reason}" + (f" (copy {copy_index})" if copy_index else ""),
                     "fetch")


class WriteRejections(beam.PTransform):
    """Rejection -> (file name, lines written) per rejected-* shard (JSON lines, sorted)."""

    def __init__(self, directory, num_shards):
        super().__init__()
        self._directory, self._num_shards = directory, num_shards

    def expand(self, rejections):
        n = self._num_shards

        def keyed(rejection):
            line = records.rejection_line(rejection.uri, rejection.reason, rejection.stage)
            return records.shard_of(f"{rejection.uri}|{rejection.stage}|{rejection.reason}", n), line

        every_shard = rejections.pipeline | "AllShards" >> beam.Create([(index, None) for index in range(n)])
        return (_grouped_by_shard(rejections | "Serialize" >> beam.Map(keyed), every_shard)
                | "WriteShard" >> beam.ParDo(_WriteRejectionShard(self._directory, n)))

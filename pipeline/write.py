"""Deterministic sharded files in a staging directory: train records and rejection lines.

Every item goes to a shard chosen from its content; every shard is grouped, sorted and written
in one pass, so the same inputs give byte-identical shards on any runner and any number of
workers. All shards are written, empty ones included, so the `-of-NNNNN` names never lie.

Train shards: one element per selected image crosses the GroupByKey, its index entry and copy
count packed into 151 bytes with a 49-character URI (`elements.pack`, which says why), to the shard
`records.shard_of(its content key)`. The writer orders the shard's records (every copy of
every image) by `records.record_order`, which spreads an image's copies through the shard;
it fetches each image's bytes once (pipeline/fetch.py: parallel reads, a bounded window
ahead), in the order of the image's first record, writes every copy from them, and streams the
records to the file, so no image bytes cross a shuffle, no image is fetched or decoded twice,
and no shard is ever held whole in memory (its packed elements, and the bytes of copies still
to write, wait on local disk: _ShardOnDisk, _SpillStore). The shard
count comes from the data: the selected inputs' bytes (copies included) over
--target_shard_mb, unless --num_shards fixes it; pipeline.select computes it in a pass of its
own (its _CountTrainShards says why). Rejection lines are small and are written as they are
grouped, in --rejected_shards shards (by default sized from the volume expected:
`rejection_shard_count`).
"""

import array
import itertools
import math
import os
import struct
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline import decode, elements, fetch, records
from pipeline.elements import Rejection

UNAVAILABLE = "unavailable"
# Rejection lines per rejected-* shard when --rejected_shards is 0. A shard's lines are grouped
# onto one worker and sorted there in memory: a million lines of ~200 bytes is a few hundred MB
# at most, while one shard for a 100M-image job (a 10M-line rejection list) would be one hot key
# holding gigabytes on one worker.
REJECTION_LINES_PER_SHARD = 1_000_000


def train_shard_count(total_bytes, target_mb):
    """Enough shards of about --target_shard_mb each (--num_shards, when set, replaces this)."""
    return max(1, math.ceil(total_bytes / (target_mb << 20)))


def rejection_shard_count(expected_lines):
    """rejected-* shards for about `expected_lines` lines (known before stage 2 runs)."""
    return max(1, math.ceil(expected_lines / REJECTION_LINES_PER_SHARD))


def _written_with_empty_shards(files, num_shards, prefix, suffix, directory):
    """(name, count) of the shards written -> the same plus (name, 0) for each of the
    `num_shards` (an int or a singleton side input) that got no item, written as an empty file.

    Why not Flatten a (shard, None) marker per shard into the GroupByKey (as this did before):
    on the local runner (FnApiRunner) a Flatten of two stages' outputs is a stage of its own,
    which holds every keyed item in memory once more before the grouping does (measured with
    memray, both stages over 100k tiny images: 33.6 MB live at the job's peak; see
    benchmarks/label_growth.py). The names written are few (one per shard), so a side input."""

    def empty_shards(_, written, n):
        names = {name for name, _ in written}
        for index in range(n):
            name = records.shard_name(prefix, index, n, suffix)
            if name not in names:
                yield name, records.write_shard(FileSystems.join(directory, name), [], framed=False)

    empties = (files.pipeline
               | "One" >> beam.Create([None])
               | "EmptyShards" >> beam.FlatMap(empty_shards, beam.pvalue.AsList(files), num_shards))
    return (files, empties) | "AllShards" >> beam.Flatten()


class _SpillStore:
    """Stored image bytes waiting for their image's next copies: a file each in a private
    temporary directory on local disk, deleted after the image's last copy.

    Copies of one image are spread through the shard (records.record_order), so its bytes
    wait from its first record to its last: in memory that would be up to every unique image
    of the shard (~--target_shard_mb, per writer thread), so they wait on disk instead."""

    def __init__(self):
        self._directory = tempfile.TemporaryDirectory(prefix="train-copies-")

    def _path(self, position):
        return os.path.join(self._directory.name, str(position))

    def put(self, position, data):
        with open(self._path(position), "wb") as handle:
            handle.write(data)

    def get(self, position, last):
        with open(self._path(position), "rb") as handle:
            data = handle.read()
        if last:
            os.remove(self._path(position))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._directory.cleanup()


_POSITION = struct.Struct(">II")  # image position, copy index: after the 32-byte hash in a sort key


class _ShardOnDisk:
    """A train shard's packed (Prediction, copies) elements in a temporary file on local disk,
    read back by position, and the order of their records.

    Why not a list in memory: the writer reads each element again for each copy, in record
    order, so it needs them all at hand; the local runner (FnApiRunner) already holds the whole
    group in its own buffers, and a second copy here, with a sort key of Python objects per
    record, made the peak grow more (measured, stage 2 alone on the local runner, 20k -> 100k
    tiny images: 1.04 KB of peak RSS more per image in memory, 0.64 KB with this). On disk the
    writer holds 8 bytes per image, and ~80 per record while it sorts them."""

    def __init__(self, items):
        self._file = tempfile.TemporaryFile(prefix="train-shard-")
        self._ends = array.array("Q", [0])
        self._keys = []  # per record: sha256(key|copy) + image position + copy index (_POSITION)
        for packed in items:
            prediction, copies = elements.unpack(packed)
            position = len(self._ends) - 1
            self._file.write(packed)
            self._ends.append(self._ends[-1] + len(packed))
            self._keys += [records.record_hash(prediction.key, copy_index)
                           + _POSITION.pack(position, copy_index) for copy_index in range(copies)]
        self._file.flush()  # read back with os.pread, past the file object's buffer

    def __len__(self):
        return len(self._ends) - 1

    def __getitem__(self, position):
        start = self._ends[position]
        return os.pread(self._file.fileno(), self._ends[position + 1] - start, start)

    def record_order(self):
        """(image positions, copy indices), two arrays, of the records in records.record_order:
        the hash, then the URI. Equal hashes are equal content and copy index, so only those
        runs need their URIs read back."""
        self._keys.sort()
        positions, copy_indices = array.array("I"), array.array("I")
        for _, tied in itertools.groupby(self._keys, key=lambda sort_key: sort_key[:32]):
            tied = [_POSITION.unpack_from(sort_key, 32) for sort_key in tied]
            if len(tied) > 1:
                tied.sort(key=lambda record: elements.unpack(self[record[0]])[0].uri)
            for position, copy_index in tied:
                positions.append(position)
                copy_indices.append(copy_index)
        self._keys = None
        return positions, copy_indices

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._file.close()


def _first_records(positions, images):
    """Image positions in the order of each image's first record."""
    seen = bytearray(images)
    for position in positions:
        if not seen[position]:
            seen[position] = 1
            yield position


class _WriteTrainShard(beam.DoFn):
    """(shard, [packed (Prediction, copies)]) -> (file name, records written). Each
    image is fetched once; a copy whose image cannot be fetched goes to UNAVAILABLE as
    (Prediction, copy_index, reason), one per lost copy (each is one rejection line)."""

    def __init__(self, directory, source, max_pixels, max_side, decode_memory_mb, threads):
        self._directory, self._source = directory, source
        self._max_pixels, self._max_side, self._decode_memory_mb = max_pixels, max_side, decode_memory_mb
        self._threads = threads
        self._shared_memory = shared.Shared()
        self._written = beam.metrics.Metrics.counter("WriteRecords", "train_written")
        self._fetched = beam.metrics.Metrics.counter("WriteRecords", "images_fetched")
        self._unavailable = beam.metrics.Metrics.counter("WriteRecords", "unavailable")

    def setup(self):
        self._memory = decode.shared_memory(self._shared_memory, self._decode_memory_mb)

    def _stored(self, item):
        _, packed = item
        prediction, _ = elements.unpack(packed)
        return fetch.stored_image(prediction, self._source, self._max_pixels, self._max_side, self._memory)

    def process(self, shard, num_shards):
        index, items = shard
        name = records.shard_name(records.TRAIN_PREFIX, index, num_shards, records.TRAIN_SUFFIX)
        with _ShardOnDisk(items) as images, _SpillStore() as spill, FileSystems.create(
                FileSystems.join(self._directory, name), mime_type="application/octet-stream") as handle:
            positions, copy_indices = images.record_order()
            # Each image is fetched once, ahead of its first record, in the order of those records.
            uri = elements.unpack(images[0])[0].uri if len(images) else ""
            threads = fetch.parallel_reads(self._source, self._threads, uri)
            fetched = fetch.fetched_in_order(
                ((position, images[position]) for position in _first_records(positions, len(images))),
                self._stored, threads, 2 * threads)
            done = array.array("I", bytes(4 * len(images)))  # copies written (or lost) so far, per image
            failed = {}  # image position -> why it could not be fetched, while copies of it remain
            count = 0
            for position, copy_index in zip(positions, copy_indices):
                prediction, copies = elements.unpack(images[position])
                done[position] += 1
                last = done[position] == copies
                if done[position] == 1:
                    _, stored = next(fetched)
                    self._fetched.inc()
                    if isinstance(stored, fetch.FetchFailed):
                        failed[position] = str(stored)
                    elif not last:
                        spill.put(position, stored)
                elif position not in failed:
                    stored = spill.get(position, last)
                if position in failed:
                    reason = failed.pop(position) if last else failed[position]
                    self._unavailable.inc()
                    yield beam.pvalue.TaggedOutput(UNAVAILABLE, (prediction, copy_index, reason))
                    continue
                handle.write(records.tfrecord_frame(records.to_example(prediction, stored, copy_index)))
                count += 1
        self._written.inc(count)
        yield name, count


class WriteTrainShards(beam.PTransform):
    """(Prediction, copies) -> {"files": (name, count) per shard, UNAVAILABLE: ...}.
    `shard_count`: a PCollection of one int, computed without these records (see
    pipeline.select's _CountTrainShards for why)."""

    def __init__(self, directory, source, max_pixels, max_side, decode_memory_mb, threads, shard_count):
        super().__init__()
        self._writer = _WriteTrainShard(directory, source, max_pixels, max_side, decode_memory_mb, threads)
        self._directory, self._shard_count = directory, shard_count

    def expand(self, written):
        num_shards = beam.pvalue.AsSingleton(self._shard_count)
        shards = (written
                  | "Pack" >> beam.MapTuple(elements.pack)
                  | "KeyByShard" >> beam.Map(
                      lambda packed, n: (records.shard_of(elements.packed_content_key(packed), n), packed),
                      num_shards)
                  | "GroupShards" >> beam.GroupByKey()
                  | "WriteShard" >> beam.ParDo(self._writer, num_shards).with_outputs(UNAVAILABLE, main="files"))
        files = _written_with_empty_shards(shards.files, num_shards, records.TRAIN_PREFIX, records.TRAIN_SUFFIX,
                                           self._directory)
        return {"files": files, UNAVAILABLE: shards[UNAVAILABLE]}


class _WriteRejectionShard(beam.DoFn):
    def __init__(self, directory, num_shards):
        self._directory, self._num_shards = directory, num_shards

    def process(self, shard):
        index, lines = shard
        ordered = sorted(lines)
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

        files = (rejections
                 | "Serialize" >> beam.Map(keyed)
                 | "GroupShards" >> beam.GroupByKey()
                 | "WriteShard" >> beam.ParDo(_WriteRejectionShard(self._directory, n)))
        return _written_with_empty_shards(files, n, records.REJECTED_PREFIX, records.REJECTED_SUFFIX, self._directory)

"""WriteShards: deterministic sharded files in a staging directory.

Each item is serialized and goes to the shard `records.shard_of(identity)`; every shard is
grouped, sorted by identity and written in one piece, so the same inputs give byte-identical shards on any
runner and any number of workers. All --num_shards files are written, empty ones included,
so the `-of-NNNNN` names never lie. A shard is held in one worker's memory while it is
written: pick --num_shards so a shard stays in the hundreds of MB (4096 shards for the
paper's 130M images at about 100 KB each).
"""

import apache_beam as beam

from pipeline import records


class _WriteOneShard(beam.DoFn):
    def __init__(self, directory, prefix, num_shards, suffix, framed):
        self._directory = directory
        self._prefix, self._num_shards, self._suffix = prefix, num_shards, suffix
        self._framed = framed
        self._written = beam.metrics.Metrics.counter("WriteRecords", f"{prefix}_written")

    def process(self, shard):
        from apache_beam.io.filesystems import FileSystems

        index, items = shard
        ordered = sorted(item for item in items if item is not None)  # (identity, payload) pairs
        name = records.shard_name(self._prefix, index, self._num_shards, self._suffix)
        count = records.write_shard(FileSystems.join(self._directory, name),
                                    (payload for _, payload in ordered), self._framed)
        self._written.inc(count)
        yield name, count


class WriteShards(beam.PTransform):
    """items -> (file name, records written) per shard, files under `directory`."""

    def __init__(self, directory, prefix, num_shards, suffix, framed, identity, serialize):
        super().__init__()
        self._directory, self._prefix, self._num_shards = directory, prefix, num_shards
        self._suffix, self._framed = suffix, framed
        self._identity, self._serialize = identity, serialize

    def expand(self, items):
        num_shards, identity, serialize = self._num_shards, self._identity, self._serialize

        def keyed_payload(item):
            # Only (identity, serialized bytes) cross the shuffle: no thumbnails, no Python
            # floats, so the shuffle (held in memory by the local runner) stays small.
            name = identity(item)
            return records.shard_of(name, num_shards), (name, serialize(item))

        keyed = items | "Serialize" >> beam.Map(keyed_payload)
        every_shard = (items.pipeline
                       | "AllShards" >> beam.Create([(index, None) for index in range(num_shards)]))
        return ((keyed, every_shard)
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteOneShard(self._directory, self._prefix, num_shards, self._suffix,
                                                            self._framed)))


def record_identity(written):
    image, copy_index = written
    return f"{image.identity}|{copy_index}"


def serialize_record(written):
    image, copy_index = written
    return records.to_example(image, copy_index)


def rejection_identity(rejection):
    return f"{rejection.uri}|{rejection.stage}|{rejection.reason}"


def serialize_rejection(rejection):
    return records.rejection_line(rejection.uri, rejection.reason, rejection.stage)

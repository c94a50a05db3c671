"""The labeling job's record formats: soft-label `tf.train.Example`s and their shard files.

A pseudo-label record (one per written image; duplicates added for class balance carry
`label/copy_index` >= 1):
  image/encoded               bytes   JPEG or PNG, RGB
  image/key                   bytes   sha256 hex of the original input bytes
  image/source_uri            bytes
  label/top_k_indices         int64   k, most probable first
  label/top_k_probabilities   float   k, descending
  label/confidence            float   max probability at temperature 1 (what selection filters on)
  label/entropy               float   nats, full temperature-scaled distribution
  label/distribution          float   num_classes (only with --full_distribution)
  label/copy_index            int64

Shards are written here rather than with `beam.io.WriteToTFRecord` because that sink deals
records to shards in arrival order, so two runs over the same inputs give different shard
contents. This job places and orders records by content: a record's train shard is
`shard_of(image/key)` (every copy of an image in the same shard), and a shard's records are
sorted by `record_order` (a hash of key and copy index first, so an image's copies are spread
through the shard rather than side by side, where they would defeat a reader's shuffle
buffer). Reruns, 1 vs N workers, and the same images under another directory produce the same
shards in the same order (only `image/source_uri` differs). The student reads a shard whole,
in this order, permuting it in windows that stay inside the shard (student/epochs.py), and
takes each shard's record count from the manifest (files.train_counts) rather than reading it.
"""

import hashlib
import json
import struct

import google_crc32c
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

SCHEMA_VERSION = 1
TRAIN_PREFIX = "train"
REJECTED_PREFIX = "rejected"
TRAIN_SUFFIX = ".tfrecord"
REJECTED_SUFFIX = ".jsonl"
# The largest TFRecord payload read_frames accepts. A record's length field is only
# covered by its own CRC, which anyone crafting a file can compute, so the length alone
# must never decide how much memory is allocated: a claimed 2**40 bytes would fail the
# whole job with MemoryError. 256 MB is far above any record this job reads or writes
# (an encoded image within --max_pixels plus its labels); a longer one is a corrupt frame.
MAX_RECORD_BYTES = 256 << 20
_READ_CHUNK = 16 << 20


def shard_name(prefix, index, num_shards, suffix):
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def shard_of(name, num_shards):
    """A shard, from a string naming what goes in it (a content key, a unit id, a rejection):
    stable across runs and workers."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % num_shards


def record_hash(key, copy_index):
    """The 32 bytes that order a train record inside its shard, before any tie (record_order)."""
    return hashlib.sha256(f"{key}|{copy_index}".encode()).digest()


def record_order(key, uri, copy_index):
    """The sort key of a train record inside its shard: content first (the hash), the URI only
    between inputs of identical content, then the copy."""
    return record_hash(key, copy_index), uri, copy_index


def bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def floats_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def ints_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def label_features(prediction):
    """The fields a train record and a prediction index entry share (pipeline/index.py)."""
    features = {
        "image/key": bytes_feature([prediction.key.encode()]),
        "image/source_uri": bytes_feature([prediction.uri.encode()]),
        "label/top_k_indices": ints_feature([int(i) for i in prediction.top_k_indices]),
        "label/top_k_probabilities": floats_feature([float(p) for p in prediction.top_k_probabilities]),
        "label/confidence": floats_feature([prediction.confidence]),
        "label/entropy": floats_feature([prediction.entropy]),
    }
    if prediction.distribution is not None:
        features["label/distribution"] = floats_feature([float(p) for p in prediction.distribution])
    return features


def serialize(features):
    # deterministic=True: map fields in a fixed order, so reruns write identical bytes.
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def to_example(prediction, encoded, copy_index):
    """A `pipeline.elements.Prediction` and the image bytes to store -> serialized `tf.train.Example`."""
    return serialize({**label_features(prediction), "image/encoded": bytes_feature([encoded]),
                      "label/copy_index": ints_feature([copy_index])})


def parse_example(serialized):
    """Serialized record -> dict of Python/numpy values (for tests, reports and tools)."""
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    record = {
        "image/encoded": feature["image/encoded"].bytes_list.value[0],
        "image/key": feature["image/key"].bytes_list.value[0].decode(),
        "image/source_uri": feature["image/source_uri"].bytes_list.value[0].decode(),
        "label/top_k_indices": np.array(feature["label/top_k_indices"].int64_list.value, np.int64),
        "label/top_k_probabilities": np.array(feature["label/top_k_probabilities"].float_list.value, np.float32),
        "label/confidence": feature["label/confidence"].float_list.value[0],
        "label/entropy": feature["label/entropy"].float_list.value[0],
        "label/copy_index": feature["label/copy_index"].int64_list.value[0],
    }
    if "label/distribution" in feature:
        record["label/distribution"] = np.array(feature["label/distribution"].float_list.value, np.float32)
    return record


def rejection_line(uri, reason, stage):
    return json.dumps({"uri": uri, "reason": reason, "stage": stage}, sort_keys=True).encode() + b"\n"


def _masked_crc32c(data):
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data):
    """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc32c(length)) + data + struct.pack("<I", _masked_crc32c(data))


def write_shard(path, payloads, framed):
    """Writes `payloads` (bytes, already in their final order) to `path` through Beam's
    filesystems, so local paths and gs:// both work. Returns the number written."""
    count = 0
    with FileSystems.create(path, mime_type="application/octet-stream") as handle:
        for payload in payloads:
            handle.write(tfrecord_frame(payload) if framed else payload)
            count += 1
    return count


def _read_at_most(handle, length):
    """Up to `length` bytes (fewer only at end of file), read in chunks so a length that
    overstates what the file holds costs no more memory than the file's remaining bytes."""
    chunks, remaining = [], length
    while remaining > 0:
        chunk = handle.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frames(handle, path, max_record_bytes=MAX_RECORD_BYTES, with_offsets=False, start=0):
    """Streams the payloads of an open TFRecord file, checking both CRCs of every record,
    without holding the file in memory.

    Raises ValueError naming `path`, the record's index and byte offset on corrupt data: a
    bad CRC, a truncated record, or a length over `max_record_bytes`. The payloads yielded
    before it are good; nothing after a corrupt frame can be located (the framing is lost),
    so a caller accounts for the rest of the file as one rejection (pipeline.sources does).
    `with_offsets`: yield (byte offset of the record, payload). `start`: the offset `handle`
    is at (after a seek).
    """
    offset, index = start, 0
    while True:
        header = handle.read(12)
        if not header:
            return
        where = f"{path}: record {index} at byte {offset}"
        if len(header) < 12:
            raise ValueError(f"{where}: truncated TFRecord header.")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:])
        if length_crc != _masked_crc32c(header[:8]):
            raise ValueError(f"{where}: corrupt TFRecord length.")
        if length > max_record_bytes:
            raise ValueError(f"{where}: TFRecord length {length} is over the {max_record_bytes}-byte limit "
                             "on one record (a corrupt or crafted length).")
        payload = _read_at_most(handle, length)
        footer = handle.read(4)
        if len(payload) < length or len(footer) < 4:
            raise ValueError(f"{where}: truncated TFRecord payload.")
        if struct.unpack("<I", footer)[0] != _masked_crc32c(payload):
            raise ValueError(f"{where}: corrupt TFRecord payload.")
        yield (offset, payload) if with_offsets else payload
        offset += 16 + length
        index += 1


def read_tfrecords(path):
    """Yields the payloads of a TFRecord file read through Beam's filesystems (gs:// too)."""
    with FileSystems.open(path, mime_type="application/octet-stream",
                          compression_type="uncompressed") as handle:
        yield from read_frames(handle, path)

"""The prediction index: what stage 1 (pipeline.predict) writes and stage 2 (pipeline.select) reads.

PRED_DIR/ (by default OUT_DIR/predictions/):
  predictions-SSSSS-of-PPPPP-DIGEST.tfrecord   one `tf.train.Example` per input, no image bytes
  index.json                                   written last: settings, teacher, shards, counts

An entry is either a prediction or a rejection (an input that could not be labeled):
  image/key                   bytes   sha256 hex of the input bytes (predictions only)
  image/source_uri            bytes
  image/source_offset         int64   byte offset of the record in a TFRecord input, else -1
  image/input_bytes           int64   size of the input (sizes the train shards)
  label/top_k_indices         int64   k, most probable first
  label/top_k_probabilities   float   k, descending
  label/confidence            float
  label/entropy               float
  label/distribution          float   num_classes (only with --full_distribution)
  rejection/reason            bytes   "category: detail" (rejections only)
  rejection/stage             bytes

Floats are float32, as the teacher computes them and as the train records store them, so
selecting from the index decides exactly what selecting from the teacher's output would.

Shards: the inputs are listed, and each unit of work (an image file, a TFRecord file, a TFDS
index range) goes to shard `records.shard_of(unit id, P)`. DIGEST is a hash of the
prediction settings and the shard's sorted units (with file sizes), so a shard file on disk
is reused by a rerun only when it was computed from exactly those inputs with exactly those
settings: resumption never mixes runs. A shard is written to a temporary name and renamed
when whole (atomic on local disk; a single object creation on GCS).
"""

import hashlib
import json
import uuid

import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.elements import Prediction, Rejection

SCHEMA_VERSION = 1
INDEX_FILE = "index.json"
SHARD_PREFIX = "predictions"
SHARD_SUFFIX = ".tfrecord"
DEFAULT_SUBDIR = "predictions"


def shard_name(index, num_shards, digest):
    return f"{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}-{digest}{SHARD_SUFFIX}"


def shard_digest(run_id, units):
    """Identifies a shard's content before computing it: settings and its sorted units."""
    text = json.dumps([run_id, sorted(units)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prediction_entry(prediction):
    """A Prediction -> serialized Example."""
    return records.serialize({**records.label_features(prediction),
                              "image/source_offset": records.ints_feature([prediction.offset]),
                              "image/input_bytes": records.ints_feature([prediction.input_bytes])})


def rejection_entry(rejection):
    """A Rejection -> serialized Example."""
    return records.serialize({"image/source_uri": records.bytes_feature([rejection.uri.encode()]),
                              "rejection/reason": records.bytes_feature([rejection.reason.encode()]),
                              "rejection/stage": records.bytes_feature([rejection.stage.encode()])})


def parse_entry(serialized):
    """Serialized Example -> Prediction or Rejection."""
    feature = tf.train.Example.FromString(serialized).features.feature
    uri = feature["image/source_uri"].bytes_list.value[0].decode()
    if "rejection/reason" in feature:
        return Rejection(uri, feature["rejection/reason"].bytes_list.value[0].decode(),
                         feature["rejection/stage"].bytes_list.value[0].decode())
    distribution = None
    if "label/distribution" in feature:
        distribution = np.array(feature["label/distribution"].float_list.value, np.float32)
    return Prediction(
        key=feature["image/key"].bytes_list.value[0].decode(), uri=uri,
        offset=feature["image/source_offset"].int64_list.value[0],
        input_bytes=feature["image/input_bytes"].int64_list.value[0],
        top_k_indices=tuple(int(i) for i in feature["label/top_k_indices"].int64_list.value),
        top_k_probabilities=tuple(feature["label/top_k_probabilities"].float_list.value),
        confidence=feature["label/confidence"].float_list.value[0],
        entropy=feature["label/entropy"].float_list.value[0],
        distribution=distribution)


def read_shard(path):
    """Yields the entries (Prediction or Rejection) of one index shard."""
    for payload in records.read_tfrecords(path):
        yield parse_entry(payload)


def read_index(directory):
    """The committed index.json of `directory`, or None."""
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(directory, INDEX_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return json.loads(handle.read())


def write_index(directory, document, keep):
    """Publishes `document` as index.json, last: first removes the shards that are not in
    `keep` (an interrupted run of other settings or inputs) and temporary files, so that
    index.json appears only once the directory holds exactly its shards."""
    from apache_beam.io.filesystems import FileSystems

    kept = set(keep)
    stale = [m.path for pattern in (f"{SHARD_PREFIX}-*", "_tmp-*")
             for m in FileSystems.match([FileSystems.join(directory, pattern)])[0].metadata_list
             if m.path.rstrip("/").rsplit("/", 1)[-1] not in kept]
    if stale:
        FileSystems.delete(stale)
    temp = FileSystems.join(directory, f"_tmp-index-{uuid.uuid4().hex}.json")
    with FileSystems.create(temp, mime_type="application/json") as handle:
        handle.write((json.dumps(document, indent=2) + "\n").encode())
    FileSystems.rename([temp], [FileSystems.join(directory, INDEX_FILE)])

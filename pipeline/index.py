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
index range) goes to a bucket; each run writes a shard per bucket where it found new units
(pipeline/buckets.py: how the index grows, and index.json's `buckets`, `shards` and `runs`).
DIGEST is a hash of the index id (`run_id`: the teacher and the settings that decide a
prediction) and the shard's sorted units (with file sizes), so a shard is reused only when it
was computed from exactly those inputs for exactly this index. A shard is written to a
temporary name and renamed when whole (atomic on local disk; a single object creation on GCS).

One stage-1 job at a time: a job claims PRED_DIR (`_predicting-NONCE.json`, see `claim`)
before it writes anything, and the commit removes files only while it holds that claim.
"""

import hashlib
import json
import uuid

import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.elements import Prediction, Rejection

SCHEMA_VERSION = 2
INDEX_FILE = "index.json"
SHARD_PREFIX = "predictions"
SHARD_SUFFIX = ".tfrecord"
DEFAULT_SUBDIR = "predictions"


def shard_name(index, num_shards, digest):
    return f"{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}-{digest}{SHARD_SUFFIX}"


def shard_digest(run_id, unit_keys):
    """Identifies a shard's content before computing it: the index id and its units' keys
    (strings, buckets.unit_key: a unit's fields may be None or ints, which do not sort together)."""
    text = json.dumps([run_id, sorted(unit_keys)])
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


def write_index(directory, document, keep, claim=None):
    """Publishes `document` as index.json, last: first removes the files not in `keep` (shards
    of another index, or of a killed run over another list) and temporary files, so that
    index.json appears only once the directory holds exactly its files. With `claim`, checks
    first that this job still holds the directory (ClaimError, nothing deleted)."""
    from apache_beam.io.filesystems import FileSystems

    if claim:
        check_claim(directory, claim)
    kept = set(keep)
    stale = [m.path for pattern in (f"{SHARD_PREFIX}-*", "dropped-*", "_tmp-*")
             for m in FileSystems.match([FileSystems.join(directory, pattern)])[0].metadata_list
             if m.path.rstrip("/").rsplit("/", 1)[-1] not in kept]
    if stale:
        FileSystems.delete(stale)
    temp = FileSystems.join(directory, f"_tmp-index-{uuid.uuid4().hex}.json")
    with FileSystems.create(temp, mime_type="application/json") as handle:
        handle.write((json.dumps(document, indent=1) + "\n").encode())
    FileSystems.rename([temp], [FileSystems.join(directory, INDEX_FILE)])
    if claim:
        release_claim(directory, claim)


CLAIM_PREFIX = "_predicting-"


class ClaimError(RuntimeError):
    """Another stage-1 job holds the prediction directory."""


def _claims(directory):
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([FileSystems.join(directory, f"{CLAIM_PREFIX}*")])[0].metadata_list)


def claim(directory, nonce, owner):
    """Claims `directory` for one stage-1 job before it writes anything there: writes
    `_predicting-NONCE.json` ({owner}), then lists the claims. Of two jobs that do this, the
    later lister sees the earlier claim (listings are strongly consistent on local disk and
    GCS), so at most one proceeds. A claim left by a killed local run (same host, no such
    process) is removed. Raises ClaimError naming the other claim (its own is withdrawn)."""
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(directory, f"{CLAIM_PREFIX}{nonce}.json")
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(owner, sort_keys=True).encode())
    others = []
    for other in _claims(directory):
        if other.rstrip("/").rsplit("/", 1)[-1] == path.rstrip("/").rsplit("/", 1)[-1]:
            continue
        if _stale(other, owner):
            FileSystems.delete([other])
        else:
            others.append(other)
    if others:
        FileSystems.delete([path])
        raise ClaimError(
            f"{others[0]} says another stage-1 job (pipeline.label) is writing the prediction index in {directory}, "
            "so this one stopped before writing anything. Two jobs must not predict into one directory at once. If "
            "no other job is running (check its Dataflow job), one was interrupted: delete that file and rerun.")
    return path


def _stale(path, owner):
    """A claim of a local run on this host whose process is gone."""
    import os

    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            other = json.loads(handle.read())
    except Exception:  # noqa: BLE001 - deleted meanwhile, or torn by a kill: not proof of a live job
        return False
    if other.get("host") != owner.get("host") or not other.get("local"):
        return False
    try:
        os.kill(int(other["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def check_claim(directory, path):
    """Raises ClaimError unless `path` is the only claim in `directory`."""
    claims = _claims(directory)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if [c.rstrip("/").rsplit("/", 1)[-1] for c in claims] != [name]:
        raise ClaimError(f"{directory}: this stage-1 job's claim {name} is gone or not alone ({claims}); index.json "
                         "was not written and nothing was deleted.")


def release_claim(directory, path):
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(path):
        FileSystems.delete([path])

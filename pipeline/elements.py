"""The elements that flow between the labeling job's stages (small, picklable, typed)."""

import struct
from typing import NamedTuple, Optional

import numpy as np


class Candidate(NamedTuple):
    """One input as read: where it came from and its raw bytes. `offset`: the byte offset of
    its record in a TFRecord file (so selection can fetch it again with one seek), else -1."""

    uri: str
    data: bytes
    offset: int = -1


class Rejection(NamedTuple):
    """An input that was not labeled. `reason` is "category: detail"; the category is what
    the manifest counts (`rejected_by_reason`)."""

    uri: str
    reason: str
    stage: str

    @property
    def category(self):
        return self.reason.split(":", 1)[0]


class Prediction(NamedTuple):
    """One entry of the prediction index (stage 1's output): the teacher's soft label for one
    input, and where to fetch the input again, without its bytes. `input_bytes` sizes the
    train shards; `offset` locates a record inside a TFRecord input (-1 otherwise)."""

    key: str  # sha256 hex of the input bytes
    uri: str
    offset: int
    input_bytes: int
    top_k_indices: tuple
    top_k_probabilities: tuple
    confidence: float
    entropy: float
    distribution: Optional[np.ndarray] = None

    @property
    def label(self):
        """The teacher's top-1 class: the class the image counts towards when balancing."""
        return int(self.top_k_indices[0])

    @property
    def identity(self):
        """Unique per input (two inputs may share content, so the key alone is not)."""
        return f"{self.key}|{self.uri}"


# Predictions cross selection's shuffles packed into one short bytes object (~170 B). The local
# runner (FnApiRunner) holds all the data crossing a shuffle at once, several times over (its
# buffers, the data channel's protos, the grouped values), so there memory grows with the bytes
# per image; a Prediction as Python objects, or as Beam's pickled encoding, costs more
# (measured, stage 2 alone on 40k tiny images: peak RSS 956 MB with Predictions, 922 MB with a
# first packing of ~350 B, pickle inside). The bytes start with the record's sort key and a
# NUL, so a shard's records are ordered by sorting the bytes themselves: UTF-8 sorts as the
# strings do, and NUL (absent from URIs) sorts a key before any longer key it prefixes.
_KEY_END = b"\x00"
_HEAD = struct.Struct("<qqHI")  # offset, input bytes, k, distribution length (0: none)


def record_key(prediction, copy_index=0):
    """The sort key and shard identity of one written record: unique per input and copy."""
    return f"{prediction.identity}|{copy_index}"


def pack(prediction, copy_index=0):
    """(Prediction, copy index) -> bytes that sort by `record_key`. Floats are kept as float32,
    as the index and the train records store them: a Prediction read from the index unpacks
    to exactly itself."""
    p = prediction
    k = len(p.top_k_indices)
    distribution = b"" if p.distribution is None else np.asarray(p.distribution, "<f4").tobytes()
    return b"".join([
        record_key(p, copy_index).encode(), _KEY_END,
        _HEAD.pack(p.offset, p.input_bytes, k, len(distribution) // 4),
        struct.pack(f"<{k}i{k + 2}f", *p.top_k_indices, *p.top_k_probabilities, p.confidence, p.entropy),
        distribution])


def packed_key(packed):
    return packed[:packed.index(_KEY_END)].decode()


def unpack(packed):
    """`pack`'s bytes -> (Prediction, copy index)."""
    end = packed.index(_KEY_END)
    identity, copy_index = packed[:end].decode().rsplit("|", 1)
    key, uri = identity.split("|", 1)  # the key is hex: no "|" in it
    at = end + 1
    offset, input_bytes, k, length = _HEAD.unpack_from(packed, at)
    at += _HEAD.size
    numbers = struct.unpack_from(f"<{k}i{k + 2}f", packed, at)
    at += 4 * (2 * k + 2)
    distribution = np.frombuffer(packed, "<f4", length, at).astype(np.float32) if length else None
    return Prediction(key, uri, offset, input_bytes, tuple(numbers[:k]), tuple(numbers[k:2 * k]),
                      numbers[2 * k], numbers[2 * k + 1], distribution), int(copy_index)

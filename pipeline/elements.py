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
        """Unique per input (two inputs may share content, so the key alone is not), as bytes
        that sort as the text "key|uri" does: a sha256 hex key as its 32 raw bytes (lower-case
        hex and its bytes sort alike), then the URI's UTF-8. Selection ranks and joins by it,
        so every byte crosses its shuffles: 81 B with a 49-character URI, not 114."""
        raw = _raw_key(self.key)
        return raw + self.uri.encode() if raw else f"{self.key}|{self.uri}".encode()


# Predictions cross selection's shuffles packed into one short bytes object (151 B with a
# 49-character URI and top-5). The local runner (FnApiRunner) holds all the data crossing a
# shuffle at once, several times over (its buffers, the data channel's protos, the grouped
# values), so there memory grows with the bytes per image; a Prediction as Python objects, or
# as Beam's pickled encoding, costs more (measured, stage 2 alone on 40k tiny images: peak RSS
# 956 MB with Predictions, 922 MB with a first packing of ~350 B, pickle inside). One packed
# element is one selected image with its copy count (--balance=duplicate), not one per copy:
# the shard writer fetches the image once and writes every copy from those bytes
# (pipeline/write.py).
#
# Layout: a kind byte; the content key (_RAW_KEY: a sha256 hex key as its 32 raw bytes, so the
# key is read without unpacking the rest; _TEXT_KEY: a length byte and the key's UTF-8, for
# keys that are not sha256 hex); _HEAD; the URI; top-k indices, probabilities, confidence,
# entropy; the distribution. struct, not varints: a few bytes more, no Python loop per field.
_RAW_KEY, _TEXT_KEY = b"\x01", b"\x02"
# offset, input bytes (< 2^31: --max_bytes), copies, k, distribution length (0: none), URI bytes
_HEAD = struct.Struct("<qIIBHH")
_HEX = frozenset(b"0123456789abcdef")


def _raw_key(key):
    """A sha256 hex key's 32 bytes; None for any other key."""
    encoded = key.encode()
    return bytes.fromhex(key) if len(encoded) == 64 and _HEX.issuperset(encoded) else None


def _packed_key(key):
    raw = _raw_key(key)
    if raw:
        return _RAW_KEY + raw
    encoded = key.encode()
    if len(encoded) > 255:
        raise ValueError(f"a content key of {len(encoded)} bytes cannot be packed (at most 255)")
    return _TEXT_KEY + bytes([len(encoded)]) + encoded


def pack(prediction, copies=1):
    """(Prediction, copies) -> bytes. Floats are kept as float32, as the index and the train
    records store them: a Prediction read from the index unpacks to exactly itself."""
    p = prediction
    k = len(p.top_k_indices)
    uri = p.uri.encode()
    distribution = b"" if p.distribution is None else np.asarray(p.distribution, "<f4").tobytes()
    return b"".join([
        _packed_key(p.key),
        _HEAD.pack(p.offset, p.input_bytes, copies, k, len(distribution) // 4, len(uri)), uri,
        struct.pack(f"<{k}i{k + 2}f", *p.top_k_indices, *p.top_k_probabilities, p.confidence, p.entropy),
        distribution])


def _unpacked_key(packed):
    """(content key, offset of _HEAD)."""
    if packed[:1] == _RAW_KEY:
        return packed[1:33].hex(), 33
    length = packed[1]
    return packed[2:2 + length].decode(), 2 + length


def packed_content_key(packed):
    """The content key (sha256 hex of the input) of `pack`'s bytes, which places its records."""
    return _unpacked_key(packed)[0]


def unpack(packed):
    """`pack`'s bytes -> (Prediction, copies)."""
    key, at = _unpacked_key(packed)
    offset, input_bytes, copies, k, length, uri_bytes = _HEAD.unpack_from(packed, at)
    at += _HEAD.size
    uri = packed[at:at + uri_bytes].decode()
    at += uri_bytes
    numbers = struct.unpack_from(f"<{k}i{k + 2}f", packed, at)
    at += 4 * (2 * k + 2)
    distribution = np.frombuffer(packed, "<f4", length, at).astype(np.float32) if length else None
    return Prediction(key, uri, offset, input_bytes, tuple(numbers[:k]), tuple(numbers[k:2 * k]),
                      numbers[2 * k], numbers[2 * k + 1], distribution), copies

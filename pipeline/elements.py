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


# Predictions cross selection's shuffles packed into one short bytes object (189 B with a
# 49-character URI and top-5). The local runner (FnApiRunner) holds all the data crossing a
# shuffle at once, several times over (its buffers, the data channel's protos, the grouped
# values), so there memory grows with the bytes
# per image; a Prediction as Python objects, or as Beam's pickled encoding, costs more
# (measured, stage 2 alone on 40k tiny images: peak RSS 956 MB with Predictions, 922 MB with a
# first packing of ~350 B, pickle inside). One packed element is one selected image with its
# copy count (--balance=duplicate), not one per copy: the shard writer fetches the image once
# and writes every copy from those bytes (pipeline/write.py). The bytes start with the
# identity and a NUL (absent from URIs and hex keys), so the content key is read without
# unpacking the rest.
_KEY_END = b"\x00"
_HEAD = struct.Struct("<qqHII")  # offset, input bytes, k, distribution length (0: none), copies


def pack(prediction, copies=1):
    """(Prediction, copies) -> bytes. Floats are kept as float32, as the index and the train
    records store them: a Prediction read from the index unpacks to exactly itself."""
    p = prediction
    k = len(p.top_k_indices)
    distribution = b"" if p.distribution is None else np.asarray(p.distribution, "<f4").tobytes()
    return b"".join([
        p.identity.encode(), _KEY_END,
        _HEAD.pack(p.offset, p.input_bytes, k, len(distribution) // 4, copies),
        struct.pack(f"<{k}i{k + 2}f", *p.top_k_indices, *p.top_k_probabilities, p.confidence, p.entropy),
        distribution])


def packed_content_key(packed):
    """The content key (sha256 hex of the input) of `pack`'s bytes, which places its records."""
    return packed[:packed.index(b"|")].decode()


def unpack(packed):
    """`pack`'s bytes -> (Prediction, copies)."""
    end = packed.index(_KEY_END)
    key, uri = packed[:end].decode().split("|", 1)  # the key is hex: no "|" in it
    at = end + 1
    offset, input_bytes, k, length, copies = _HEAD.unpack_from(packed, at)
    at += _HEAD.size
    numbers = struct.unpack_from(f"<{k}i{k + 2}f", packed, at)
    at += 4 * (2 * k + 2)
    distribution = np.frombuffer(packed, "<f4", length, at).astype(np.float32) if length else None
    return Prediction(key, uri, offset, input_bytes, tuple(numbers[:k]), tuple(numbers[k:2 * k]),
                      numbers[2 * k], numbers[2 * k + 1], distribution), copies

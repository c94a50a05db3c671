"""The elements that flow between the labeling job's stages (small, picklable, typed)."""

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

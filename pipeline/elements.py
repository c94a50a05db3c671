"""The elements that flow between the labeling job's stages (small, picklable, typed)."""

from typing import NamedTuple, Optional

import numpy as np


class Candidate(NamedTuple):
    """One input as read: where it came from and its raw bytes."""

    uri: str
    data: bytes


class Rejection(NamedTuple):
    """An input that was not labeled. `reason` is "category: detail"; the category is what
    the manifest counts (`rejected_by_reason`)."""

    uri: str
    reason: str
    stage: str

    @property
    def category(self):
        return self.reason.split(":", 1)[0]


class StoredImage(NamedTuple):
    """What the job keeps of a decoded image: its id, origin, the bytes written to the
    records, and a small JPEG thumbnail for the report."""

    key: str  # sha256 hex of the original input bytes
    uri: str
    encoded: bytes
    thumbnail: bytes


class LabeledImage(NamedTuple):
    """A stored image with the teacher's soft label."""

    image: StoredImage
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
        return f"{self.image.key}|{self.image.uri}"

"""pipeline.elements.pack: index entries cross selection's shuffles as short bytes that sort
as their record keys and unpack to exactly the Prediction packed."""

import numpy as np

from pipeline import elements
from pipeline.elements import Prediction


def _prediction(uri, key="ab" * 32, distribution=None, offset=-1):
    f32 = lambda value: float(np.float32(value))  # noqa: E731 - the index stores float32
    return Prediction(key, uri, offset, 12_345, (7, 3, 0), (f32(0.7), f32(0.2), f32(0.1)), f32(0.7), f32(0.8),
                      distribution)


def test_a_packed_prediction_unpacks_to_itself_and_its_copy_index():
    for prediction in (_prediction("gs://bucket/images/a.jpg"),
                       _prediction("/data/train-00001.tfrecord#17", offset=4_096),
                       _prediction("/photos/été|2024.png")):  # a "|" in a URI: the key has none
        for copy_index in (0, 1, 12):
            assert elements.unpack(elements.pack(prediction, copy_index)) == (prediction, copy_index)


def test_the_distribution_survives_as_float32():
    distribution = np.linspace(0, 1, 10, dtype=np.float32)
    unpacked, _ = elements.unpack(elements.pack(_prediction("a.jpg", distribution=distribution)))
    assert unpacked.distribution.dtype == np.float32
    np.testing.assert_array_equal(unpacked.distribution, distribution)


def test_packed_bytes_sort_as_record_keys():
    # Prefixes of one another ("a|1" / "a|10", "x.jpg" / "x.jpg2"), non-ASCII, other keys.
    records = [(_prediction(uri, key), copy_index)
               for key in ("0f" * 32, "ab" * 32, "f0" * 32)
               for uri in ("x.jpg", "x.jpg2", "x.jpg|", "é.jpg", "Z.jpg", "x.jp")
               for copy_index in (0, 1, 2, 10, 11)]
    by_bytes = [elements.unpack(packed) for packed in sorted(elements.pack(*record) for record in records)]
    assert by_bytes == sorted(records, key=lambda record: elements.record_key(*record))
    assert all(elements.packed_key(elements.pack(*record)) == elements.record_key(*record) for record in records)

"""pipeline.elements.pack: a selected image (index entry and copy count) crosses selection's
shuffles as short bytes that unpack to exactly the Prediction packed; records.record_order
orders a shard's records by content, copies spread."""

import numpy as np

from pipeline import elements, records
from pipeline.elements import Prediction


def _prediction(uri, key="ab" * 32, distribution=None, offset=-1):
    f32 = lambda value: float(np.float32(value))  # noqa: E731 - the index stores float32
    return Prediction(key, uri, offset, 12_345, (7, 3, 0), (f32(0.7), f32(0.2), f32(0.1)), f32(0.7), f32(0.8),
                      distribution)


def test_a_packed_prediction_unpacks_to_itself_and_its_copy_count():
    for prediction in (_prediction("gs://bucket/images/a.jpg"),
                       _prediction("/data/train-00001.tfrecord#17", offset=4_096),
                       _prediction("/photos/été|2024.png")):  # a "|" in a URI: the key has none
        for copies in (1, 2, 130_000):
            packed = elements.pack(prediction, copies)
            assert elements.unpack(packed) == (prediction, copies)
            assert elements.packed_content_key(packed) == prediction.key


def test_a_sha256_key_packs_as_32_raw_bytes_and_any_other_key_as_text():
    hex_key = "0123456789abcdef" * 4
    assert len(elements.pack(_prediction("a.jpg", key=hex_key))) == len(elements.pack(_prediction("a.jpg"))) == 91
    for key in ("key-photo", "0123456789ABCDEF" * 4, "é" * 10, ""):  # upper-case hex stays text: exact round trip
        packed = elements.pack(_prediction("a.jpg", key=key))
        assert elements.unpack(packed)[0].key == elements.packed_content_key(packed) == key


def test_identities_are_short_bytes_that_sort_as_key_bar_uri():
    rng = np.random.default_rng(0)
    keys = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex() for _ in range(20)] + ["00" * 32, "ff" * 32]
    uris = ["a.jpg", "b.jpg", "/photos/été.png", "/photos/z|1.png", "gs://b/" + "x" * 41]
    predictions = [_prediction(uri, key=key) for key in keys for uri in uris]
    assert (sorted(predictions, key=lambda p: p.identity)
            == sorted(predictions, key=lambda p: f"{p.key}|{p.uri}"))
    assert len({p.identity for p in predictions}) == len(predictions)
    assert len(_prediction("gs://b/" + "x" * 42, key=keys[0]).identity) == 32 + 49
    # Keys that are not sha256 hex (tests name contents) keep the text form.
    assert _prediction("a.jpg", key="key-cat").identity == b"key-cat|a.jpg"


def test_the_distribution_survives_as_float32():
    distribution = np.linspace(0, 1, 10, dtype=np.float32)
    unpacked, _ = elements.unpack(elements.pack(_prediction("a.jpg", distribution=distribution)))
    assert unpacked.distribution.dtype == np.float32
    np.testing.assert_array_equal(unpacked.distribution, distribution)


def test_records_are_ordered_by_content_with_copies_spread():
    keys = [f"{index:02x}" * 32 for index in range(6)]
    order = sorted(records.record_order(key, f"/photos/{index}.png", copy_index)
                   for index, key in enumerate(keys) for copy_index in range(4))
    by_key = {key: f"/photos/{index}.png" for index, key in enumerate(keys)}
    # The same contents under other URIs: the same order of (key, copy index).
    elsewhere = sorted(records.record_order(key, f"/other/dir/{index}.png", copy_index)
                       for index, key in enumerate(keys) for copy_index in range(4))
    assert [(digest, copy) for digest, _, copy in order] == [(digest, copy) for digest, _, copy in elsewhere]
    # Copies of one image are not side by side: at most a few of the 24 neighbours share an image.
    images = [uri for _, uri, _ in order]
    assert sum(a == b for a, b in zip(images, images[1:])) <= 4, images
    assert sorted(set(images)) == sorted(by_key.values())
    # Identical content under two URIs: the hash ties, the URI decides, then the copy.
    tied = sorted([records.record_order(keys[0], "b.png", 0), records.record_order(keys[0], "a.png", 0)])
    assert [uri for _, uri, _ in tied] == ["a.png", "b.png"]

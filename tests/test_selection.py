"""pipeline.selection: threshold, per-class cap (most confident first), balance, dedup."""

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import selection
from pipeline.elements import Prediction


def _image(name, label, confidence, key=None):
    return Prediction(key or f"key-{name}", f"mem://{name}.jpg", -1, 100, (label, 1 - label),
                      (confidence, 1 - confidence), confidence, 0.5)


# class 0: five images (0.9 .. 0.5) and one below threshold; class 1: two images.
IMAGES = [_image(f"a{i}", 0, 0.9 - 0.1 * i) for i in range(5)] + [_image("low", 0, 0.2)] + \
         [_image("b0", 1, 0.8), _image("b1", 1, 0.7)]


@pytest.mark.parametrize("per_class, balance, written, over_cap", [
    # No cap: everything above the threshold is written once.
    (0, "none", {"a0": 1, "a1": 1, "a2": 1, "a3": 1, "a4": 1, "b0": 1, "b1": 1}, []),
    # Cap 3: the three most confident of class 0; class 1 (2 images) is left short.
    (3, "none", {"a0": 1, "a1": 1, "a2": 1, "b0": 1, "b1": 1}, ["a3", "a4"]),
    # Cap 3 with duplication: class 1 is filled to 3, its most confident image twice.
    (3, "duplicate", {"a0": 1, "a1": 1, "a2": 1, "b0": 2, "b1": 1}, ["a3", "a4"]),
    # Cap 7: class 0 (5) gets 7 = 1+1 each, plus one more for its two most confident.
    (7, "duplicate", {"a0": 2, "a1": 2, "a2": 1, "a3": 1, "a4": 1, "b0": 4, "b1": 3}, []),
])
def test_select(per_class, balance, written, over_cap):
    pipeline = TestPipeline()
    selected = pipeline | beam.Create(IMAGES) | selection.Select(0.3, per_class, balance)
    name = beam.Map(lambda image: image.uri[len("mem://"):-len(".jpg")])
    copies = (selected["written"]
              | "Names" >> beam.MapTuple(lambda image, copy: (image.uri[6:-4], copy))
              | beam.combiners.Count.PerKey())
    assert_that(copies, equal_to(list(written.items())), label="Written")
    indices = (selected["written"]
               | "Copies" >> beam.MapTuple(lambda image, copy: (image.uri[6:-4], copy))
               | beam.GroupByKey() | beam.MapTuple(lambda key, values: (key, sorted(values))))
    assert_that(indices, equal_to([(key, list(range(count))) for key, count in written.items()]), label="Indices")
    assert_that(selected["over_cap"] | "OverCap" >> name, equal_to(over_cap), label="OverCap")
    assert_that(selected["below"] | "Below" >> name, equal_to(["low"]), label="Below")
    # The train shard count's pass: the same bytes as Select writes (100 per image and copy).
    total = pipeline | "Again" >> beam.Create(IMAGES) | selection.SelectedBytes(0.3, per_class, balance)
    assert_that(total, equal_to([100 * sum(written.values())]), label="SelectedBytes")
    pipeline.run()


def test_copies_per_image_fills_exactly_to_the_cap():
    ranked = [(0.9, "x"), (0.8, "y"), (0.7, "z")]
    copies = dict(selection.copies_per_image((0, ranked), 10, "duplicate"))
    assert copies == {"x": 4, "y": 3, "z": 3} and sum(copies.values()) == 10
    assert dict(selection.copies_per_image((0, ranked), 10, "none")) == {"x": 1, "y": 1, "z": 1}


def test_deduplicate_keeps_the_smallest_uri_and_rejects_the_rest():
    with TestPipeline() as pipeline:
        result = (pipeline
                  | beam.Create([_image("b", 0, 0.5, "same"), _image("a", 1, 0.5, "same"), _image("c", 0, 0.5, "other")])
                  | selection.Deduplicate())
        assert_that(result.unique | beam.Map(lambda c: c.uri), equal_to(["mem://a.jpg", "mem://c.jpg"]),
                    label="Unique")
        assert_that(result[selection.REJECTED] | beam.Map(lambda r: (r.uri, r.reason, r.stage)),
                    equal_to([("mem://b.jpg", "duplicate: same content as mem://a.jpg", "dedup")]), label="Rejected")

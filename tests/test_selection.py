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
    # One element per kept image, whatever its copy count: the writer fetches it once.
    copies = selected["written"] | "Names" >> beam.MapTuple(lambda image, count: (image.uri[6:-4], count))
    assert_that(copies, equal_to(list(written.items())), label="Written")
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
        assert_that(result["unique"] | beam.Map(lambda c: c.uri), equal_to(["mem://a.jpg", "mem://c.jpg"]),
                    label="Unique")
        assert_that(result[selection.REJECTED] | beam.Map(lambda r: (r.uri, r.reason, r.stage)),
                    equal_to([("mem://b.jpg", "duplicate: same content as mem://a.jpg", "dedup")]), label="Rejected")


# One content 50 times (URIs in no sorted order), one twice, others once. Confidences exact in
# float32, as the index stores them: an entry that crossed the join packed is equal to itself.
REPEATED = ([_image(f"{(index * 37) % 50:03d}", 0, 0.5, "hot") for index in range(50)]
            + [_image("pair-b", 1, 0.625, "pair"), _image("pair-a", 1, 0.625, "pair")]
            + [_image(f"single{index}", 1, 0.75) for index in range(5)])


@pytest.mark.parametrize("hot_threshold", [0, 1, 10, selection.HOT_DUPLICATES])
def test_deduplicate_accounts_for_a_content_repeated_many_times_with_and_without_hot_key_routing(hot_threshold):
    # 0: every key routed by lookup; 1 and 10: the 50 copies by lookup, the pair joined;
    # HOT_DUPLICATES: every key joined. The decisions are the same.
    pipeline = TestPipeline()
    result = pipeline | beam.Create(REPEATED) | selection.Deduplicate(hot_threshold)
    unique = ["mem://000.jpg", "mem://pair-a.jpg"] + [f"mem://single{index}.jpg" for index in range(5)]
    rejected = ([(f"mem://{index:03d}.jpg", "duplicate: same content as mem://000.jpg", "dedup")
                 for index in range(1, 50)] + [("mem://pair-b.jpg", "duplicate: same content as mem://pair-a.jpg",
                                                "dedup")])
    assert_that(result["unique"] | beam.Map(lambda c: c.uri), equal_to(unique), label="Unique")
    assert_that(result["unique"] | "Whole" >> beam.Map(lambda c: c in REPEATED), equal_to([True] * 7),
                label="Entries")
    assert_that(result[selection.REJECTED] | beam.Map(lambda r: (r.uri, r.reason, r.stage)), equal_to(rejected),
                label="Rejected")
    counters = pipeline.run().metrics().query(beam.metrics.MetricsFilter().with_name("duplicates"))["counters"]
    assert sum(counter.committed for counter in counters) == 50


def test_the_per_class_top_uses_hot_key_fanout():
    pipeline = TestPipeline()
    _ = pipeline | beam.Create(IMAGES) | "Select" >> selection.Select(0.3, 3, "duplicate")
    _ = pipeline | "Again" >> beam.Create(IMAGES) | "Bytes" >> selection.SelectedBytes(0.3, 3, "duplicate")
    found = []

    class FindCombines(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            self.visit_transform(node)

        def visit_transform(self, node):
            if node.full_label.endswith("/TopPerClass"):
                found.append((node.full_label.split("/")[0], type(node.transform).__name__))

    pipeline.visit(FindCombines())
    assert sorted(found) == [("Bytes", "_CombinePerKeyWithHotKeyFanout"),
                             ("Select", "_CombinePerKeyWithHotKeyFanout")], found


def test_a_tie_in_confidence_is_broken_by_content_not_uri():
    # Two images of one class at the same confidence, one slot: the smaller content key wins,
    # whatever the URIs, so the same images under another directory select the same.
    tied = [_image("z", 0, 0.8, "key-a"), _image("a", 0, 0.8, "key-b")]
    with TestPipeline() as pipeline:
        selected = pipeline | beam.Create(tied) | selection.Select(0.3, 1, "none")
        assert_that(selected["written"] | beam.MapTuple(lambda image, copies: (image.uri, copies)),
                    equal_to([("mem://a.jpg", 1)]))

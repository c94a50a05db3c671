"""Select: Noisy Student's data selection, as Beam transforms that scale with the input.

It runs on prediction index entries (pipeline.elements.Prediction: labels and URIs, no
image bytes); the shard writer fetches the bytes of what is kept (pipeline/write.py).
1. Drop labels whose confidence is below --min_confidence.
2. Per class (the teacher's top-1), keep at most --per_class images, most confident first.
   Only a (confidence, identity) pair per image goes through Beam's Top.PerKey; the
   decision is joined back to the entries by identity.
3. --balance=duplicate: a class with n < per_class kept images is filled to per_class by
   writing each image per_class // n times, plus one more for the (per_class % n) most
   confident. Noisy Student duplicates at random; ranking by confidence makes the choice
   deterministic without a seed.
Ties in confidence are broken by the image identity, so reruns select the same images.

Optional dedup of identical content (--dedup) happens first (see `Deduplicate`).
"""

import apache_beam as beam

from pipeline import elements
from pipeline.elements import Rejection

OVER_CAP = "over_cap"
REJECTED = "rejected"


def copies_by_rank(count, per_class, balance):
    """How many times each of a class's `count` kept images is written, most confident first."""
    if balance == "duplicate" and count < per_class:
        base, extra = divmod(per_class, count)
        return [base + (1 if rank < extra else 0) for rank in range(count)]
    return [1] * count


def copies_per_image(item, per_class, balance):
    """(class, [(confidence, identity)] most confident first) -> (identity, copies) pairs."""
    _, ranked = item
    for (_, identity), copies in zip(ranked, copies_by_rank(len(ranked), per_class, balance)):
        yield identity, copies


def _class_bytes(item, per_class, balance):
    """(class, [(confidence, identity, input bytes)] most confident first) -> bytes written."""
    _, ranked = item
    return sum(size * copies for (_, _, size), copies in zip(ranked, copies_by_rank(len(ranked), per_class, balance)))


BELOW = "below"


class _Threshold(beam.DoFn):
    """Prediction -> itself, or to the `below` output under --min_confidence."""

    def __init__(self, min_confidence):
        self._min_confidence = min_confidence
        self._above = beam.metrics.Metrics.counter("Select", "above_threshold")
        self._below = beam.metrics.Metrics.counter("Select", "below_threshold")

    def process(self, image):
        if image.confidence >= self._min_confidence:
            self._above.inc()
            yield image
        else:
            self._below.inc()
            yield beam.pvalue.TaggedOutput(BELOW, image)


class _RouteBySelection(beam.DoFn):
    """Joined (identity, {images, copies}) -> (Prediction, copy_index) per written copy,
    or the image to the over_cap output."""

    def __init__(self):
        self._kept = beam.metrics.Metrics.counter("Select", "kept")
        self._duplicates = beam.metrics.Metrics.counter("Select", "duplicates")
        self._over_cap = beam.metrics.Metrics.counter("Select", "over_cap")

    def process(self, joined):
        _, grouped = joined
        (packed,) = grouped["images"]
        image, _ = elements.unpack(packed)
        copies = list(grouped["copies"])
        if not copies:
            self._over_cap.inc()
            yield beam.pvalue.TaggedOutput(OVER_CAP, image)
            return
        self._kept.inc()
        self._duplicates.inc(copies[0] - 1)
        for copy_index in range(copies[0]):
            yield image, copy_index


class Select(beam.PTransform):
    """Prediction -> {"written": (Prediction, copy_index), "below": ..., "over_cap": ...}."""

    def __init__(self, min_confidence, per_class, balance):
        super().__init__()
        self._min_confidence = min_confidence
        self._per_class = per_class
        self._balance = balance

    def expand(self, labeled):
        thresholded = labeled | "Threshold" >> beam.ParDo(_Threshold(self._min_confidence)).with_outputs(
            BELOW, main="above")
        above, below = thresholded.above, thresholded[BELOW]
        if not self._per_class:
            written = above | "KeepAll" >> beam.Map(lambda image: (image, 0))
            over_cap = labeled.pipeline | "NothingOverCap" >> beam.Create([])
            return {"written": written, "below": below, "over_cap": over_cap}
        copies = (above
                  | "RankKeys" >> beam.Map(lambda image: (image.label, (image.confidence, image.identity)))
                  | "TopPerClass" >> beam.combiners.Top.PerKey(self._per_class)
                  | "CopiesPerImage" >> beam.FlatMap(copies_per_image, self._per_class, self._balance))
        # Packed (elements.pack says why): the join holds every above-threshold entry.
        images = above | "ByIdentity" >> beam.Map(lambda image: (image.identity, elements.pack(image)))
        routed = ({"images": images, "copies": copies}
                  | "JoinSelection" >> beam.CoGroupByKey()
                  | "Route" >> beam.ParDo(_RouteBySelection()).with_outputs(OVER_CAP, main="written"))
        return {"written": routed.written, "below": below, "over_cap": routed[OVER_CAP]}


class SelectedBytes(beam.PTransform):
    """Prediction -> one int: the input bytes `Select` writes, copies included, decided from
    the same per-class ranking (ties broken the same way) but without Select's join of every
    entry to its decision, so it holds nothing per image."""

    def __init__(self, min_confidence, per_class, balance):
        super().__init__()
        self._min_confidence, self._per_class, self._balance = min_confidence, per_class, balance

    def expand(self, labeled):
        min_confidence, per_class = self._min_confidence, self._per_class
        # The same test as Select's _Threshold, without its counters: they would count twice.
        above = labeled | "Threshold" >> beam.Filter(lambda image: image.confidence >= min_confidence)
        if not per_class:
            sizes = above | "InputBytes" >> beam.Map(lambda image: image.input_bytes)
        else:
            sizes = (above
                     | "RankKeys" >> beam.Map(
                         lambda image: (image.label, (image.confidence, image.identity, image.input_bytes)))
                     | "TopPerClass" >> beam.combiners.Top.PerKey(per_class)
                     | "BytesPerClass" >> beam.Map(_class_bytes, per_class, self._balance))
        return sizes | "Sum" >> beam.CombineGlobally(sum)


class _FirstUriWins(beam.DoFn):
    """(content key, its index entries) -> the entry with the smallest URI, which stays; every
    other entry becomes a duplicate rejection naming that URI."""

    def __init__(self):
        self._duplicates = beam.metrics.Metrics.counter("Deduplicate", "duplicates")

    def process(self, item):
        _, entries = item
        ordered = sorted(entries, key=lambda entry: entry.uri)
        yield ordered[0]
        for entry in ordered[1:]:
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                REJECTED, Rejection(entry.uri, f"duplicate: same content as {ordered[0].uri}", "dedup"))


class Deduplicate(beam.PTransform):
    """Index entries with identical content (the same key): the one with the smallest URI is
    kept, the others are rejected as duplicates, so they are counted and never written.

    The teacher has labeled every copy by then (stage 1 predicts each input it reads); moving
    dedup into selection makes it a choice that can be changed without the teacher. Groups
    hold index entries (a few hundred bytes each), never image bytes."""

    def expand(self, entries):
        return (entries
                | "KeyByContent" >> beam.Map(lambda entry: (entry.key, entry))
                | "GroupByContent" >> beam.GroupByKey()
                | "FirstUriWins" >> beam.ParDo(_FirstUriWins()).with_outputs(REJECTED, main="unique"))

"""Select: Noisy Student's data selection, as Beam transforms that scale with the input.

It runs on prediction index entries (pipeline.elements.Prediction: labels and URIs, no
image bytes); the shard writer fetches the bytes of what is kept (pipeline/write.py).
1. Drop labels whose confidence is below --min_confidence.
2. Per class (the teacher's top-1), keep at most --per_class images, most confident first.
   Its default is derived from the data (`derived_per_class`): the images the teacher labeled
   divided evenly among its classes, so the balanced set is about as large as the unlabeled
   set.
   Only a (confidence, identity) pair per image goes through a Top combiner; the decision is
   joined back to the entries by identity.
3. --balance=duplicate: a class with n < per_class kept images is filled to per_class by
   writing each image per_class // n times, plus one more for the (per_class % n) most
   confident. Noisy Student duplicates at random; ranking by confidence makes the choice
   deterministic without a seed. Select emits each kept image once, with its copy count; the
   writer fetches it once and writes every copy.
Ties in confidence are broken by the image identity (content key first), so reruns select
the same images, and so do the same images under other URIs.

No key is hot: a class is one key of the per-class Top, so it is combined with hot-key fan-out
(HOT_KEY_FANOUT); dedup picks each content's survivor with a combiner, never by grouping and
sorting a content's entries (see `Deduplicate`), and runs before selection when --dedup is set.
"""

import apache_beam as beam

from pipeline import elements
from pipeline.elements import Rejection

OVER_CAP = "over_cap"
REJECTED = "rejected"
# Sub-keys a hot key is pre-combined under before one worker merges them: a class (the per-class
# Top's key) holds ~100k entries at ImageNet scale and far more in an unbalanced unlabeled set,
# and one content (dedup's key) may be repeated millions of times; without fan-out each such
# key's whole combine lands on one worker.
HOT_KEY_FANOUT = 16


def derived_per_class(labeled, num_classes):
    """--per_class when not given: `labeled` (the index's labeled entries) // num_classes, at
    least 1. A rule, not a tuned value: it needs only the count stage 1 commits, so stage 2 is
    built with it before reading any entry (a cap from the above-threshold count would need a
    pass over the index first). At the 130M images this job is sized for, over 1,000 classes,
    it gives 130,000: the count Noisy Student chose by hand for its 130M-image student set."""
    return max(1, labeled // num_classes)


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
    """Joined (identity, {images, copies}) -> (Prediction, copies) for a kept image (one
    element, whatever its copy count), or the image to the over_cap output."""

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
        yield image, copies[0]


def _top_per_class(per_class):
    """(class, ranked value) -> (class, the `per_class` largest values, largest first), with
    hot-key fan-out (HOT_KEY_FANOUT says why)."""
    return beam.CombinePerKey(beam.combiners.TopCombineFn(per_class)).with_hot_key_fanout(HOT_KEY_FANOUT)


class Select(beam.PTransform):
    """Prediction -> {"written": (Prediction, copies), "below": ..., "over_cap": ...}."""

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
            written = above | "KeepAll" >> beam.Map(lambda image: (image, 1))
            over_cap = labeled.pipeline | "NothingOverCap" >> beam.Create([])
            return {"written": written, "below": below, "over_cap": over_cap}
        copies = (above
                  | "RankKeys" >> beam.Map(lambda image: (image.label, (image.confidence, image.identity)))
                  | "TopPerClass" >> _top_per_class(self._per_class)
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
                     | "TopPerClass" >> _top_per_class(per_class)
                     | "BytesPerClass" >> beam.Map(_class_bytes, per_class, self._balance))
        return sizes | "Sum" >> beam.CombineGlobally(sum)


# Entries of one content above which its key is "hot": its entries are then routed by a
# side-input lookup instead of a join whose one group would hold them all. The lookup holds
# one URI per hot key, so at most (entries / HOT_DUPLICATES) of them.
HOT_DUPLICATES = 1000
COLD = "cold"


class _SmallestUri(beam.CombineFn):
    """URIs -> (the smallest, how many): the survivor of a content key and its entry count."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, uri):
        smallest, count = accumulator
        return (uri if smallest is None or uri < smallest else smallest), count + 1

    def merge_accumulators(self, accumulators):
        smallest, total = None, 0
        for uri, count in accumulators:
            if uri is not None and (smallest is None or uri < smallest):
                smallest = uri
            total += count
        return smallest, total

    def extract_output(self, accumulator):
        return accumulator


def _survivor_or_duplicate(entry, survivor, duplicates):
    if entry.uri == survivor:
        yield entry
        return
    duplicates.inc()
    yield beam.pvalue.TaggedOutput(REJECTED, Rejection(entry.uri, f"duplicate: same content as {survivor}", "dedup"))


class _RouteHot(beam.DoFn):
    """An entry of a hot key -> itself or its duplicate rejection, decided by lookup; any
    other entry -> (key, packed entry) to the COLD output, for the join."""

    def __init__(self):
        self._duplicates = beam.metrics.Metrics.counter("Deduplicate", "duplicates")

    def process(self, entry, hot):
        survivor = hot.get(entry.key)
        if survivor is None:
            yield beam.pvalue.TaggedOutput(COLD, (entry.key, elements.pack(entry)))
        else:
            yield from _survivor_or_duplicate(entry, survivor, self._duplicates)


class _JoinCold(beam.DoFn):
    """(key, {survivor: [uri], entries: [packed]}) -> each entry, or its duplicate rejection.
    One pass over the group, in any order: the survivor is already known."""

    def __init__(self):
        self._duplicates = beam.metrics.Metrics.counter("Deduplicate", "duplicates")

    def process(self, joined):
        _, grouped = joined
        (survivor,) = grouped["survivor"]
        for packed in grouped["entries"]:
            entry, _ = elements.unpack(packed)
            yield from _survivor_or_duplicate(entry, survivor, self._duplicates)


class Deduplicate(beam.PTransform):
    """Index entries with identical content (the same key): the one with the smallest URI is
    kept, the others are rejected as duplicates, so they are counted and never written.
    Returns {"unique": Prediction, REJECTED: Rejection}.

    The teacher has labeled every copy by then (stage 1 predicts each input it reads); moving
    dedup into selection makes it a choice that can be changed without the teacher. The
    survivor of each key comes from a combiner with hot-key fan-out, so neither one content
    seen a million times nor a sort of its entries lands on one worker; entries of hot keys
    (over `hot_threshold`) are then decided by lookup, the rest joined to their survivor in
    groups of at most `hot_threshold` packed index entries (never image bytes)."""

    def __init__(self, hot_threshold=HOT_DUPLICATES):
        super().__init__()
        self._hot_threshold = hot_threshold

    def expand(self, entries):
        threshold = self._hot_threshold
        survivors = (entries
                     | "UriByContent" >> beam.Map(lambda entry: (entry.key, entry.uri))
                     | "SmallestUri" >> beam.CombinePerKey(_SmallestUri()).with_hot_key_fanout(HOT_KEY_FANOUT))
        hot = (survivors
               | "HotKeys" >> beam.Filter(lambda item: item[1][1] > threshold)
               | "HotSurvivors" >> beam.MapTuple(lambda key, summary: (key, summary[0])))
        cold_survivors = (survivors
                          | "ColdKeys" >> beam.Filter(lambda item: item[1][1] <= threshold)
                          | "ColdSurvivors" >> beam.MapTuple(lambda key, summary: (key, summary[0])))
        routed = entries | "RouteHot" >> beam.ParDo(_RouteHot(), beam.pvalue.AsDict(hot)).with_outputs(
            COLD, REJECTED, main="unique")
        joined = ({"survivor": cold_survivors, "entries": routed[COLD]}
                  | "JoinSurvivor" >> beam.CoGroupByKey()
                  | "Decide" >> beam.ParDo(_JoinCold()).with_outputs(REJECTED, main="unique"))
        return {"unique": (routed.unique, joined.unique) | "Unique" >> beam.Flatten(),
                REJECTED: (routed[REJECTED], joined[REJECTED]) | "Duplicates" >> beam.Flatten()}

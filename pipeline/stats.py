"""The job's aggregates, computed with Beam combiners inside the job, as named "facts".

Every fact is one small value (a count, a per-class dict, a histogram); `Facts` gathers them
into one dict for the commit step, which checks the accounting and writes `stats.json` and
`manifest.json`. Nothing here grows with the number of images except through per-class
aggregates bounded by the class count (and --thumbnails_per_class examples per class).
"""

import base64
import math

import apache_beam as beam
from apache_beam.transforms import stats as beam_stats

CONFIDENCE_BINS = 100
ENTROPY_BINS = 50
QUANTILES = 11  # 0%, 10%, ..., 100%


class HistogramFn(beam.CombineFn):
    """Counts of values in `bins` equal-width bins over [low, high]; the top edge is inclusive."""

    def __init__(self, low, high, bins):
        self._low, self._high, self._bins = low, high, bins

    def create_accumulator(self):
        return [0] * self._bins

    def add_input(self, counts, value):
        position = (value - self._low) / (self._high - self._low) if self._high > self._low else 0.0
        counts[min(self._bins - 1, max(0, int(position * self._bins)))] += 1
        return counts

    def merge_accumulators(self, accumulators):
        return [sum(column) for column in zip(*accumulators)]

    def extract_output(self, counts):
        return counts


def histogram_edges(low, high, bins):
    return [low + (high - low) * i / bins for i in range(bins + 1)]


def _fact(pcoll, name, combine):
    return pcoll | f"Combine_{name}" >> combine | f"Name_{name}" >> beam.Map(lambda value: (name, value))


def _count(pcoll, name):
    return _fact(pcoll, name, beam.combiners.Count.Globally())


def _per_class_count(pcoll, name, label_of):
    return _fact(pcoll | f"ClassOf_{name}" >> beam.Map(label_of), name,
                 beam.combiners.Count.PerElement() | f"ToDict_{name}" >> beam.combiners.ToDict())


def _example(prediction):
    return prediction.confidence, prediction.identity, prediction.uri, prediction.key, prediction.offset


class _AddThumbnails(beam.DoFn):
    """{class: [example rows]} -> the same with a base64 JPEG thumbnail appended to each row.

    Thumbnails are made here, for the few examples per class the report shows, from inputs
    fetched again (pipeline/fetch.py): the other images never get one. An input that can no
    longer be fetched keeps an empty thumbnail (the report shows its URI without a picture)."""

    def __init__(self, source, max_pixels, threads):
        self._source, self._max_pixels, self._threads = source, max_pixels, threads

    def process(self, by_class):
        from pipeline import fetch
        from pipeline.elements import Prediction

        rows = [(label, row) for label in sorted(by_class) for row in by_class[label]]

        def thumbnail(item):
            _, (confidence, _, uri, key, offset) = item
            entry = Prediction(key, uri, offset, 0, (), (), confidence, 0.0)
            return fetch.stored_image(entry, self._source, self._max_pixels, 0, thumbnail=True)

        result = {label: [] for label in by_class}
        threads = fetch.parallel_reads(self._source, self._threads, rows[0][1][2] if rows else "")
        for (label, row), small in fetch.fetched_in_order(rows, thumbnail, threads, 4 * threads):
            encoded = "" if isinstance(small, fetch.FetchFailed) else base64.b64encode(small).decode()
            result[label].append((*row, encoded))
        yield result


class Facts(beam.PTransform):
    """The named collections of the job -> one dict {fact name: value}."""

    def __init__(self, num_classes, thumbnails_per_class, source, max_pixels, fetch_threads):
        super().__init__()
        self._num_classes = num_classes
        self._thumbnails = thumbnails_per_class
        self._thumbnail_maker = _AddThumbnails(source, max_pixels, fetch_threads)

    def expand(self, collections):
        c = collections
        # "written" holds one (Prediction, copies) per kept image: kept counts them, duplicates
        # their extra copies. "unavailable" holds one (Prediction, copy_index, reason) per lost copy.
        extra_copies = c["written"] | "ExtraCopies" >> beam.MapTuple(lambda image, copies: (image.label, copies - 1))
        facts = [
            _count(c["read"], "read"),
            _count(c["rejected"], "rejected"),
            _count(c["labeled"], "labeled"),
            _count(c["below"], "below_threshold"),
            _count(c["over_cap"], "over_cap"),
            _count(c["written"], "kept"),
            _fact(extra_copies | "DuplicateCounts" >> beam.Values(), "duplicates", beam.CombineGlobally(sum)),
            _count(c["unavailable"] | "UnavailableOriginals" >> beam.Filter(lambda item: item[1] == 0), "unavailable"),
            _count(c["unavailable"] | "UnavailableCopies" >> beam.Filter(lambda item: item[1] > 0),
                   "unavailable_copies"),
            _fact(c["train_files"], "train_files", beam.combiners.ToList()),
            _fact(c["rejected_files"], "rejected_files", beam.combiners.ToList()),
            _per_class_count(c["rejected"], "rejected_by_reason", lambda rejection: rejection.category),
            _per_class_count(c["labeled"], "class_labeled", lambda image: image.label),
            _per_class_count(c["written"], "class_kept", lambda item: item[0].label),
            _fact(extra_copies, "class_duplicates",
                  beam.CombinePerKey(sum) | "DuplicatesToDict" >> beam.combiners.ToDict()),
            _per_class_count(c["over_cap"], "class_over_cap", lambda image: image.label),
            _per_class_count(c["unavailable"] | "ClassUnavailableOriginals" >> beam.Filter(lambda item: item[1] == 0),
                             "class_unavailable", lambda item: item[0].label),
            _per_class_count(c["unavailable"] | "ClassUnavailableCopies" >> beam.Filter(lambda item: item[1] > 0),
                             "class_unavailable_copies", lambda item: item[0].label),
            _per_class_count(c["below"], "class_below_threshold", lambda image: image.label),
            _fact(c["labeled"] | "Confidences" >> beam.Map(lambda image: image.confidence), "confidence_histogram",
                  beam.CombineGlobally(HistogramFn(0.0, 1.0, CONFIDENCE_BINS))),
            _fact(c["labeled"] | "Entropies" >> beam.Map(lambda image: image.entropy), "entropy_histogram",
                  beam.CombineGlobally(HistogramFn(0.0, math.log(self._num_classes), ENTROPY_BINS))),
        ]
        by_class = c["labeled"] | "ConfidenceByClass" >> beam.Map(lambda image: (image.label, image.confidence))
        facts += [
            _fact(by_class, "class_mean_confidence",
                  beam.combiners.Mean.PerKey() | "MeanToDict" >> beam.combiners.ToDict()),
            _fact(by_class, "class_confidence_quantiles",
                  beam_stats.ApproximateQuantiles.PerKey(QUANTILES) | "QuantilesToDict" >> beam.combiners.ToDict()),
        ]
        examples = c["labeled"] | "ExamplesByClass" >> beam.Map(lambda image: (image.label, _example(image)))
        facts += [
            _fact(examples, "most_confident",
                  beam.combiners.Top.LargestPerKey(self._thumbnails) | "MostToDict" >> beam.combiners.ToDict()
                  | "MostThumbnails" >> beam.ParDo(self._thumbnail_maker)),
            _fact(examples, "least_confident",
                  beam.combiners.Top.SmallestPerKey(self._thumbnails) | "LeastToDict" >> beam.combiners.ToDict()
                  | "LeastThumbnails" >> beam.ParDo(self._thumbnail_maker)),
        ]
        return (facts
                | "AllFacts" >> beam.Flatten()
                | "FactsToDict" >> beam.combiners.ToDict())


def stats_document(facts, class_names):
    """The `stats.json` document from the facts (see the output contract in docs/design.md)."""
    num_classes = len(class_names)

    def get(name, index):
        return int(facts[name].get(index, 0))

    per_class = []
    for index, name in enumerate(class_names):
        # class_kept and class_duplicates count what selection chose; the writer could not fetch some.
        unavailable = get("class_unavailable", index)
        kept = get("class_kept", index) - unavailable
        duplicates = get("class_duplicates", index) - get("class_unavailable_copies", index)
        mean = facts["class_mean_confidence"].get(index)
        per_class.append({
            "class": index, "name": name, "labeled": get("class_labeled", index),
            "above_threshold": get("class_labeled", index) - get("class_below_threshold", index),
            "over_cap": get("class_over_cap", index), "kept": kept, "duplicates": duplicates,
            "unavailable": unavailable,
            "written": kept + duplicates, "mean_confidence": None if mean is None else float(mean),
            "confidence_quantiles": [float(q) for q in facts["class_confidence_quantiles"].get(index, [])],
        })

    def examples(rows):
        return [{"confidence": row[0], "uri": row[2], "key": row[3], "thumbnail": row[5]} for row in rows]

    return {
        "schema_version": 1,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "confidence_histogram": {"edges": histogram_edges(0.0, 1.0, CONFIDENCE_BINS),
                                 "counts": facts["confidence_histogram"]},
        "entropy_histogram": {"edges": histogram_edges(0.0, math.log(num_classes), ENTROPY_BINS),
                              "counts": facts["entropy_histogram"]},
        "per_class": per_class,
        "examples": {str(index): {"most_confident": examples(facts["most_confident"].get(index, [])),
                                  "least_confident": examples(facts["least_confident"].get(index, []))}
                     for index in sorted(set(facts["most_confident"]) | set(facts["least_confident"]))},
        "rejected_by_reason": dict(sorted(facts["rejected_by_reason"].items())),
    }

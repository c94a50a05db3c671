"""`--recompute`: rebuild stats.json with a Beam job over the written train-*.tfrecord records.

For record directories without stats.json (written by another tool, or by a job that died
after its records), so a report still never needs one machine to read every record: the
histograms, per-class counts and quantiles are Beam combiners, and the examples are Top-N
per class, so memory per worker is bounded by classes x N whatever the record count.

What the records can and cannot tell:
- known: per class, the kept originals (copy_index 0) and the balance duplicates
  (copy_index > 0), hence written and the duplication factor; confidence and entropy
  histograms, mean and deciles of confidence, most and least confident examples, all over the
  KEPT images.
- not known: images below the threshold, over the class cap, or rejected were never written.
  `labeled` and `above_threshold` are therefore set to the kept count (a lower bound), and
  the histograms miss the low-confidence tail that --min_confidence removed. Rejections are
  taken from manifest.json, or counted from rejected-*.jsonl when there is no manifest.
The result carries "recomputed_from_records": true so the report says so.
"""

import base64
import io
import json
import math

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.report.summary import MANIFEST_FILE, SCHEMA_VERSION, STATS_FILE, ReportError, join, read_json

EXAMPLES_PER_CLASS = 6
THUMBNAIL_SIDE = 64
NOTES = ("Recomputed from the written records: labeled and above_threshold equal kept (a lower bound); "
         "histograms, means and quantiles cover kept images only.")


def parse_record(serialized):
    """The fields of one train-*.tfrecord tf.train.Example that the aggregates need."""
    from tensorflow.core.example import example_pb2  # deferred: only workers parse records

    features = example_pb2.Example.FromString(serialized).features.feature

    def first(name, kind):
        values = getattr(features[name], kind).value if name in features else []
        return values[0] if values else None

    indices = features["label/top_k_indices"].int64_list.value if "label/top_k_indices" in features else []
    if not indices or first("label/confidence", "float_list") is None:
        raise ReportError("a record lacks label/top_k_indices or label/confidence; is this a labeling job's "
                          "train-*.tfrecord?")
    return {
        "class": int(indices[0]),
        "confidence": float(first("label/confidence", "float_list")),
        "entropy": float(first("label/entropy", "float_list") or 0.0),
        "copy_index": int(first("label/copy_index", "int64_list") or 0),
        "key": (first("image/key", "bytes_list") or b"").decode("utf-8", "replace"),
        "uri": (first("image/source_uri", "bytes_list") or b"").decode("utf-8", "replace"),
        "image": first("image/encoded", "bytes_list") or b"",
    }


class HistogramFn(beam.CombineFn):
    """Counts of values per bin of fixed `edges`; the last bin includes its upper edge."""

    def __init__(self, edges):
        self.edges = list(edges)

    def create_accumulator(self):
        return [0] * (len(self.edges) - 1)

    def add_input(self, counts, value):
        index = int(np.searchsorted(self.edges, value, side="right")) - 1
        counts[min(max(index, 0), len(counts) - 1)] += 1
        return counts

    def merge_accumulators(self, accumulators):
        return [sum(column) for column in zip(*accumulators)]

    def extract_output(self, counts):
        return {"edges": self.edges, "counts": counts}


class ClassCountsFn(beam.CombineFn):
    """Per class: kept originals, duplicates, and the confidence sum of the originals."""

    def create_accumulator(self):
        return (0, 0, 0.0)

    def add_input(self, accumulator, record):
        kept, duplicates, confidence_sum = accumulator
        if record["copy_index"]:
            return kept, duplicates + 1, confidence_sum
        return kept + 1, duplicates, confidence_sum + record["confidence"]

    def merge_accumulators(self, accumulators):
        return tuple(sum(column) for column in zip(*accumulators))

    def extract_output(self, accumulator):
        return accumulator


def thumbnail(image_bytes, side=THUMBNAIL_SIDE):
    """Base64 JPEG no larger than `side` pixels, or "" for bytes that do not decode."""
    from PIL import Image  # deferred: only the examples step needs it

    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return ""
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def as_examples(records):
    return [{"key": key, "uri": uri, "confidence": confidence, "thumbnail": thumbnail(image)}
            for confidence, key, uri, image in records]


def assemble(_, class_names, rejected_by_reason, confidence_histogram, entropy_histogram, class_counts,
             quantiles, most_confident, least_confident):
    per_class = []
    for index, name in enumerate(class_names):
        kept, duplicates, confidence_sum = class_counts.get(index, (0, 0, 0.0))
        per_class.append({
            "class": index, "name": name, "labeled": kept, "above_threshold": kept, "kept": kept,
            "duplicates": duplicates, "written": kept + duplicates,
            "mean_confidence": confidence_sum / kept if kept else None,
            "confidence_quantiles": [float(value) for value in quantiles.get(index, [])]})
    examples = {str(index): {"most_confident": as_examples(most_confident.get(index, [])),
                             "least_confident": as_examples(least_confident.get(index, []))}
                for index in sorted(set(most_confident) | set(least_confident))}
    return {"schema_version": SCHEMA_VERSION, "num_classes": len(class_names),
            "class_names": list(class_names), "confidence_histogram": confidence_histogram,
            "entropy_histogram": entropy_histogram, "per_class": per_class, "examples": examples,
            "rejected_by_reason": rejected_by_reason, "recomputed_from_records": True, "recompute_notes": NOTES}


def write_json(value, path):
    with FileSystems.create(path) as handle:
        handle.write((json.dumps(value, indent=1) + "\n").encode("utf-8"))


def class_names_for(manifest, teacher_path, num_classes):
    """Class names from the teacher (flag, then manifest), else class_0.. for `num_classes`."""
    teacher_path = teacher_path or ((manifest or {}).get("teacher") or {}).get("path")
    if teacher_path:
        from teacher import metadata  # deferred: reads teacher.json only

        names = list(metadata.read(teacher_path).class_names)
        if num_classes and num_classes != len(names):
            raise ReportError(f"--num_classes={num_classes} but the teacher at {teacher_path} has {len(names)}.")
        return names
    num_classes = num_classes or ((manifest or {}).get("teacher") or {}).get("num_classes")
    if not num_classes:
        raise ReportError("--recompute needs the number of classes: pass --teacher=TEACHER_DIR or "
                          "--num_classes=N (there is no manifest.json naming the teacher).")
    return [f"class_{index}" for index in range(num_classes)]


def _matches(pattern):
    return [metadata.path for result in FileSystems.match([pattern]) for metadata in result.metadata_list]


def recompute(labels, beam_args=(), teacher_path=None, num_classes=None, examples_per_class=EXAMPLES_PER_CLASS):
    """Runs the Beam job that writes LABELS/stats.json from LABELS/train-*.tfrecord; returns the stats."""
    manifest = read_json(join(labels, MANIFEST_FILE), required=False)
    class_names = class_names_for(manifest, teacher_path, num_classes)
    records_pattern = join(labels, "train-*.tfrecord")
    if not _matches(records_pattern):
        raise ReportError(f"--recompute: no records match {records_pattern}.")
    rejected_files = _matches(join(labels, "rejected-*.jsonl"))
    confidence_edges = [round(step / 100, 2) for step in range(101)]
    entropy_edges = [math.log(len(class_names)) * step / 50 for step in range(51)]
    stats_path = join(labels, STATS_FILE)
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        records = (pipeline | "ReadRecords" >> beam.io.ReadFromTFRecord(records_pattern)
                   | "Parse" >> beam.Map(parse_record))
        originals = records | "Originals" >> beam.Filter(lambda record: record["copy_index"] == 0)
        confidence_histogram = (originals | "Confidence" >> beam.Map(lambda record: record["confidence"])
                                | "ConfidenceHistogram" >> beam.CombineGlobally(HistogramFn(confidence_edges)))
        entropy_histogram = (originals | "Entropy" >> beam.Map(lambda record: record["entropy"])
                             | "EntropyHistogram" >> beam.CombineGlobally(HistogramFn(entropy_edges)))
        class_counts = (records | "ByClass" >> beam.Map(lambda record: (record["class"], record))
                        | "ClassCounts" >> beam.CombinePerKey(ClassCountsFn()))
        confidences = originals | "ConfidenceByClass" >> beam.Map(lambda record: (record["class"],
                                                                                   record["confidence"]))
        quantiles = confidences | "Quantiles" >> beam.transforms.stats.ApproximateQuantiles.PerKey(11)
        candidates = originals | "Candidates" >> beam.Map(
            lambda record: (record["class"], (record["confidence"], record["key"], record["uri"], record["image"])))
        # Ties on confidence are broken by image key, so reruns pick the same examples.
        most_confident = candidates | "MostConfident" >> beam.combiners.Top.PerKey(
            examples_per_class, key=lambda value: (value[0], value[1]))
        least_confident = candidates | "LeastConfident" >> beam.combiners.Top.PerKey(
            examples_per_class, key=lambda value: (value[0], value[1]), reverse=True)
        if manifest is not None or not rejected_files:
            rejected = pipeline | "RejectedFromManifest" >> beam.Create([dict((manifest or {}).get(
                "rejected_by_reason") or {})])
        else:
            rejected = (pipeline | "ReadRejected" >> beam.io.ReadFromText(
                join(labels, "rejected-*.jsonl"))
                | "Reason" >> beam.Map(lambda line: json.loads(line).get("reason", "unknown"))
                | "CountReasons" >> beam.combiners.Count.PerElement()
                | "ReasonsAsDict" >> beam.combiners.ToDict())
        (pipeline | "One" >> beam.Create([None])
         | "Assemble" >> beam.Map(
             assemble, class_names, beam.pvalue.AsSingleton(rejected),
             beam.pvalue.AsSingleton(confidence_histogram), beam.pvalue.AsSingleton(entropy_histogram),
             beam.pvalue.AsDict(class_counts), beam.pvalue.AsDict(quantiles), beam.pvalue.AsDict(most_confident),
             beam.pvalue.AsDict(least_confident))
         | "WriteStats" >> beam.Map(write_json, stats_path))
    return read_json(stats_path)

"""pipeline.report --recompute: stats.json rebuilt by a Beam job (DirectRunner) from train-*.tfrecord."""

import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline.report import cli as report
from pipeline.report.recompute import recompute
from pipeline.report.summary import ReportError

NUM_CLASSES = 3


def png(shade):
    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), (shade, shade, 255 - shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def example(label, confidence, copy_index, index):
    """One record with the contract's features (top-k of 2)."""
    other = (label + 1) % NUM_CLASSES
    features = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(int(confidence * 255))])),
        "image/key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{index:064x}".encode()])),
        "image/source_uri": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[f"gs://bucket/{index}.png".encode()])),
        "label/top_k_indices": tf.train.Feature(int64_list=tf.train.Int64List(value=[label, other])),
        "label/top_k_probabilities": tf.train.Feature(float_list=tf.train.FloatList(
            value=[confidence, 1 - confidence])),
        "label/confidence": tf.train.Feature(float_list=tf.train.FloatList(value=[confidence])),
        "label/entropy": tf.train.Feature(float_list=tf.train.FloatList(value=[1 - confidence])),
        "label/copy_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[copy_index])),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_records(directory):
    """Two shards: class 0 has 6 originals, class 1 has 2 originals + 3 duplicates, class 2 none."""
    originals = [(0, 0.5 + 0.08 * i) for i in range(6)] + [(1, 0.4), (1, 0.7)]
    records = [example(label, confidence, 0, index) for index, (label, confidence) in enumerate(originals)]
    records += [example(1, 0.4, copy, 100 + copy) for copy in (1, 2, 3)]
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(directory / f"train-{shard:05d}-of-00002.tfrecord")) as writer:
            for record in records[shard::2]:
                writer.write(record)
    return originals


def test_recompute_without_manifest_counts_rejections_and_writes_stats(tmp_path):
    directory = tmp_path / "labels"
    originals = write_records(directory)
    lines = [{"uri": "a.jpg", "reason": "decode_error", "stage": "decode"},
             {"uri": "b.jpg", "reason": "decode_error", "stage": "decode"},
             {"uri": "c.jpg", "reason": "too_large", "stage": "decode"}]
    (directory / "rejected-00000-of-00001.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = recompute(str(directory), ["--runner=DirectRunner"], num_classes=NUM_CLASSES, examples_per_class=2)
    assert json.loads((directory / "stats.json").read_text()) == stats
    assert stats["recomputed_from_records"] and stats["rejected_by_reason"] == {"decode_error": 2, "too_large": 1}
    rows = stats["per_class"]
    assert [(row["kept"], row["duplicates"], row["written"]) for row in rows] == [(6, 0, 6), (2, 3, 5), (0, 0, 0)]
    assert rows[0]["labeled"] == rows[0]["above_threshold"] == 6
    assert rows[0]["mean_confidence"] == pytest.approx(np.mean([c for label, c in originals if label == 0]))
    assert rows[0]["confidence_quantiles"][0] == pytest.approx(0.5)
    assert rows[0]["confidence_quantiles"][-1] == pytest.approx(0.9)
    assert rows[2]["mean_confidence"] is None and rows[2]["confidence_quantiles"] == []
    assert sum(stats["confidence_histogram"]["counts"]) == len(originals)  # duplicates are not images
    assert stats["confidence_histogram"]["counts"][50] == 1 and stats["confidence_histogram"]["counts"][40] == 1
    assert stats["entropy_histogram"]["edges"][-1] == pytest.approx(math.log(NUM_CLASSES))
    most = stats["examples"]["0"]["most_confident"]
    least = stats["examples"]["0"]["least_confident"]
    assert [round(item["confidence"], 2) for item in most] == [0.9, 0.82]
    assert [round(item["confidence"], 2) for item in least] == [0.5, 0.58]
    assert most[0]["uri"] == "gs://bucket/5.png" and most[0]["thumbnail"].startswith("/9j/")  # a JPEG
    assert "2" not in stats["examples"]


def test_report_with_recompute_flags_what_it_cannot_know(tmp_path):
    directory = tmp_path / "labels"
    write_records(directory)
    manifest = {"schema_version": 1, "teacher": {"num_classes": NUM_CLASSES},
                "settings": {"min_confidence": 0.3}, "rejected_by_reason": {"unreadable": 4}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    output = tmp_path / "report.html"
    summary, text = report.build_report(str(directory), str(output), recompute=True,
                                        beam_args=["--runner=DirectRunner"])
    assert summary["rejected_by_reason"] == {"unreadable": 4}
    assert summary["counts"]["written"] == 11 and summary["counts"]["duplicates"] == 3
    assert any("recomputed from the written records" in warning for warning in summary["warnings"])
    assert "recomputed from the written records" in output.read_text()
    with pytest.raises(ReportError, match="exists"):  # never replaces stats silently
        report.build_report(str(directory), output_format="text", recompute=True)


def test_recompute_needs_the_class_count(tmp_path):
    directory = tmp_path / "labels"
    write_records(directory)
    with pytest.raises(ReportError, match="--num_classes"):
        recompute(str(directory))
    with pytest.raises(ReportError, match="no records match"):
        recompute(str(tmp_path / "empty"), num_classes=3)

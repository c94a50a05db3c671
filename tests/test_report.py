"""pipeline.report: summary, text/JSON/HTML output and escaping, on a synthetic labeling run.

`write_synthetic_run` writes an OUT_DIR per the labeling-job output contract (manifest.json,
stats.json, no records) from a simulated selection, so its accounting closes by construction.
The other report tests import it.
"""

import base64
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.report import cli as report
from pipeline.report.html import thumbnail_uri
from pipeline.report.summary import ReportError, printable, read_run, summarize

# Executing either payload would be visible in the DOM (title changed, attribute on <body>).
SCRIPT_CLASS = '<script>document.title="INJECTED";document.body.setAttribute("data-injected","1")</script>'
ALERT_CLASS = "<script>alert(1)</script>"
QUOTED_URI = "gs://bucket/it's \"quoted\" <img src=x onerror=\"document.body.setAttribute('data-injected',2)\">.jpg"
CLASS_NAMES = ["tabby cat", SCRIPT_CLASS, "golden retriever", ALERT_CLASS, "rare bird", "empty class"]
MIN_CONFIDENCE, PER_CLASS = 0.3, 150


def jpeg_base64(shade, side=48):
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 120, 255 - shade)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def simulate(seed=0, num_images=1200):
    """Per labeled image (class, confidence, entropy) from per-class beta distributions."""
    rng = np.random.default_rng(seed)
    class_probabilities = np.array([0.35, 0.2, 0.25, 0.15, 0.05, 0.0])
    classes = rng.choice(len(CLASS_NAMES), size=num_images, p=class_probabilities)
    shapes = [(8, 2), (3, 3), (9, 1.5), (2, 4), (2, 2), (1, 1)]
    confidence = np.array([rng.beta(*shapes[label]) for label in classes]) * 0.85 + 0.15
    rest = (1 - confidence) / (len(CLASS_NAMES) - 1)
    entropy = -(confidence * np.log(confidence) + (len(CLASS_NAMES) - 1) * rest * np.log(np.maximum(rest, 1e-12)))
    return classes, confidence, entropy


def write_synthetic_run(directory, with_stats=True, rejected=(("decode_error", 12), ("<b>too_large</b>", 8))):
    """manifest.json (+ stats.json) of a simulated run in `directory`; returns (manifest, stats)."""
    classes, confidence, entropy = simulate()
    num_classes = len(CLASS_NAMES)
    per_class, examples = [], {}
    kept_per_class = [min(int(((classes == label) & (confidence >= MIN_CONFIDENCE)).sum()), PER_CLASS)
                      for label in range(num_classes)]
    target = max(kept_per_class)
    for label, name in enumerate(CLASS_NAMES):
        mine = np.sort(confidence[classes == label])
        above = int((mine >= MIN_CONFIDENCE).sum())
        kept = kept_per_class[label]
        duplicates = min(target, 2 * kept) - kept if kept else 0
        per_class.append({
            "class": label, "name": name, "labeled": int(len(mine)), "above_threshold": above, "kept": kept,
            "duplicates": duplicates, "written": kept + duplicates,
            "mean_confidence": float(mine.mean()) if len(mine) else None,
            "confidence_quantiles": [float(value) for value in np.quantile(mine, np.linspace(0, 1, 11))]
            if len(mine) else []})
        if len(mine):
            def example(value, index):
                uri = QUOTED_URI if (label, index) == (1, 0) else f"gs://bucket/images/{label}/{index}.jpg"
                return {"key": f"{label:02d}{index:062d}", "uri": uri, "confidence": float(value),
                        "thumbnail": jpeg_base64(int(value * 255))}
            examples[str(label)] = {"most_confident": [example(v, i) for i, v in enumerate(mine[::-1][:4])],
                                    "least_confident": [example(v, 10 + i) for i, v in enumerate(mine[:4])]}
    rejected_by_reason = dict(rejected)
    labeled = int(len(classes))
    kept = sum(row["kept"] for row in per_class)
    above = sum(row["above_threshold"] for row in per_class)
    duplicates = sum(row["duplicates"] for row in per_class)
    manifest = {
        "schema_version": 1, "run_id": "0123456789abcdef",
        "teacher": {"teacher_id": "feedfacecafe0001", "model_name": "resnet_rs_50", "num_classes": num_classes,
                    "eval_image_size": 160, "path": str(directory / "no-teacher-here")},
        "settings": {"top_k": 5, "temperature": 1.0, "min_confidence": MIN_CONFIDENCE, "per_class": PER_CLASS,
                     "balance": "duplicate", "dedup": True, "full_distribution": False, "max_side": 4096,
                     "max_pixels": 40000000, "num_shards": 4, "note": "<i>not bold</i>"},
        "input": "gs://bucket/unlabeled/*.jpg",
        "counts": {"read": labeled + sum(rejected_by_reason.values()), "rejected": sum(rejected_by_reason.values()),
                   "labeled": labeled, "below_threshold": labeled - above, "over_cap": above - kept, "kept": kept,
                   "duplicates": duplicates, "written": kept + duplicates},
        "rejected_by_reason": rejected_by_reason,
        "files": {"train": [f"train-{shard:05d}-of-00004.tfrecord" for shard in range(4)], "rejected": []},
    }
    stats = {
        "schema_version": 1, "num_classes": num_classes, "class_names": CLASS_NAMES,
        "confidence_histogram": {"edges": [step / 100 for step in range(101)],
                                 "counts": np.histogram(confidence, np.linspace(0, 1, 101))[0].tolist()},
        "entropy_histogram": {"edges": [math.log(num_classes) * step / 50 for step in range(51)],
                              "counts": np.histogram(entropy, np.linspace(0, math.log(num_classes), 51))[0].tolist()},
        "per_class": per_class, "examples": examples, "rejected_by_reason": rejected_by_reason,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    if with_stats:
        (directory / "stats.json").write_text(json.dumps(stats))
    return manifest, stats


@pytest.fixture
def run_directory(tmp_path):
    directory = tmp_path / "labels"
    write_synthetic_run(directory)
    return directory


def test_summary_accounting_and_sweep(run_directory):
    manifest, stats = read_run(str(run_directory))
    summary = summarize(str(run_directory), manifest, stats)
    assert summary["accounting_closes"] and not any("Accounting" in w for w in summary["warnings"])
    classes, confidence, _ = simulate()
    sweep = {row["min_confidence"]: row for row in summary["threshold_sweep"]}
    # Thresholds on the histogram's edges are exact.
    for threshold in (0.0, 0.3, 0.5, 0.9):
        assert sweep[threshold]["above_threshold"] == int((confidence >= threshold).sum())
    assert sweep[MIN_CONFIDENCE]["current"]
    assert sweep[0.0]["estimated_kept"] == sum(min(int((classes == c).sum()), PER_CLASS) for c in range(6))
    assert sweep[MIN_CONFIDENCE]["estimated_kept"] == pytest.approx(manifest["counts"]["kept"], rel=0.03)
    # Worst first: the class nobody was labeled as, then ascending mean confidence.
    order = [row["class"] for row in summary["per_class"]]
    assert order[0] == 5
    means = [row["mean_confidence"] for row in summary["per_class"][1:]]
    assert means == sorted(means)
    by_class = {row["class"]: row for row in summary["per_class"]}
    assert by_class[0]["duplication_factor"] == by_class[0]["written"] / by_class[0]["kept"]
    assert any("1 of 6 classes have no written images" in warning for warning in summary["warnings"])


def test_broken_accounting_is_reported(tmp_path):
    directory = tmp_path / "labels"
    manifest, _ = write_synthetic_run(directory)
    manifest["counts"]["read"] += 3
    (directory / "manifest.json").write_text(json.dumps(manifest))
    summary, text = report.build_report(str(directory), output_format="text")
    assert not summary["accounting_closes"]
    assert "read = 1,223 but rejected + labeled = 1,220" in text


def test_text_format_is_a_readable_table(run_directory):
    _, text = report.build_report(str(run_directory), output_format="text")
    assert "kept" in text and "min_confidence" in text and "<- current" in text
    assert "worst 6 of 6 classes" in text
    assert "decode_error 12" in text
    # Control characters in data are shown escaped, not sent to the terminal.
    assert "\x1b" not in printable("evil\x1b[2Jname")


def test_json_format_round_trips(run_directory):
    summary, text = report.build_report(str(run_directory), output_format="json")
    parsed = json.loads(text)
    assert parsed["counts"] == summary["counts"]
    assert parsed["per_class"][0]["class"] == 5
    assert {row["min_confidence"] for row in parsed["threshold_sweep"]} >= {0.0, 0.3, 0.99}


def test_html_is_self_contained_and_escapes_data(run_directory, tmp_path):
    output = tmp_path / "report.html"
    report.build_report(str(run_directory), str(output))
    page = output.read_text()
    assert page.count("<script>") == 1  # the sorter, nothing from data
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;document.title=&quot;INJECTED&quot;" in page
    assert "&lt;b&gt;too_large&lt;/b&gt;" in page and "&lt;i&gt;not bold&lt;/i&gt;" in page
    assert "it&#x27;s &quot;quoted&quot; &lt;img src=x onerror=" in page
    assert "<img src=x" not in page and "<b>too_large" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched at view time
    assert page.count("<svg") == 4  # two histograms, the sweep chart, the class chart
    assert page.count('src="data:image/jpeg;base64,') == 5 * 8
    assert 'id="classes"' in page and "Content-Security-Policy" in page


def test_thumbnails_that_are_not_images_never_reach_src():
    assert thumbnail_uri('" onerror="alert(1)') is None
    assert thumbnail_uri(base64.b64encode(b"<svg onload=alert(1)>").decode()) is None
    assert thumbnail_uri(jpeg_base64(10)).startswith("data:image/jpeg;base64,/9j/")


def test_missing_stats_names_the_fix(tmp_path):
    directory = tmp_path / "labels"
    write_synthetic_run(directory, with_stats=False)
    with pytest.raises(ReportError, match="--recompute"):
        report.build_report(str(directory), output_format="text")
    with pytest.raises(ReportError, match="--output"):
        report.build_report(str(directory))
    (directory / "stats.json").write_text(json.dumps({"schema_version": 2}))
    with pytest.raises(ReportError, match="schema_version 2"):
        report.build_report(str(directory), output_format="text")


def test_command_line(run_directory, tmp_path):
    output = tmp_path / "cli.html"
    result = subprocess.run([sys.executable, "-m", "pipeline.report", f"--labels={run_directory}",
                             f"--output={output}"], capture_output=True, text=True, check=True)
    assert "report written to" in result.stdout and output.exists()
    result = subprocess.run([sys.executable, "-m", "pipeline.report", f"--labels={run_directory}", "--format=json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["run_id"] == "0123456789abcdef"
    result = subprocess.run([sys.executable, "-m", "pipeline.report", f"--labels={tmp_path}/nothing",
                             "--format=text"], capture_output=True, text=True)
    assert result.returncode != 0 and "has no stats.json" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline.report", f"--labels={run_directory}", "--format=text",
                             "--holdot=typo"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown flag --holdot; did you mean --holdout?" in result.stderr


def test_empty_run_renders(tmp_path):
    """A run whose input matched nothing still gets a report, not a crash."""
    directory = tmp_path / "labels"
    manifest, stats = write_synthetic_run(directory)
    manifest["counts"] = {name: 0 for name in manifest["counts"]}
    manifest["rejected_by_reason"] = stats["rejected_by_reason"] = {}
    for histogram in ("confidence_histogram", "entropy_histogram"):
        stats[histogram]["counts"] = [0] * len(stats[histogram]["counts"])
    stats["per_class"] = [{"class": row["class"], "name": row["name"], "labeled": 0, "above_threshold": 0, "kept": 0,
                           "duplicates": 0, "written": 0, "mean_confidence": None, "confidence_quantiles": []}
                          for row in stats["per_class"]]
    stats["examples"] = {}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "stats.json").write_text(json.dumps(stats))
    summary, text = report.build_report(str(directory), str(tmp_path / "empty.html"))
    assert summary["accounting_closes"] and "6 of 6 classes have no written images" in text
    assert all(row["fraction_of_labeled"] is None for row in summary["threshold_sweep"])
    assert "<svg" in (tmp_path / "empty.html").read_text()

"""pipeline.report --holdout: accuracy, reliability, ECE and the accuracy sweep of a real (tiny) teacher."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import models
import teacher
from pipeline.report import cli as report
from pipeline.report import holdout
from pipeline.report.summary import ReportError
from test_report import write_synthetic_run

# tfds.testing.mock_data names ClassLabel classes "0", "1", ...; the teacher uses the same names
# so one teacher serves both the folder and the tfds holdout.
CLASS_NAMES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def teacher_directory(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher") / "tiny"
    teacher.export(models.create("resnet_rs_tiny", num_classes=3), "resnet_rs_tiny", str(directory),
                   class_names=CLASS_NAMES)
    return str(directory)


@pytest.fixture(scope="module")
def holdout_folder(tmp_path_factory):
    """4 PNGs per teacher class, one corrupt file, and a class the teacher does not have."""
    root = tmp_path_factory.mktemp("holdout")
    rng = np.random.default_rng(0)
    for name in CLASS_NAMES + ["9"]:
        (root / name).mkdir()
        for index in range(4 if name != "9" else 2):
            pixels = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            (root / name / f"{index}.png").write_bytes(buffer.getvalue())
    (root / "0" / "broken.jpg").write_bytes(b"not an image")
    (root / "1" / "notes.txt").write_text("not an image either, and not an image name")
    return root


def test_reliability_and_expected_calibration_error():
    confidence = np.array([0.95, 0.95, 0.5, 0.5])
    correct = np.array([True, False, True, True])
    bins, error = holdout.reliability(confidence, correct)
    assert len(bins) == 15 and sum(item["count"] for item in bins) == 4
    assert error == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.5))
    assert bins[14]["accuracy"] == 0.5 and bins[7]["confidence"] == 0.5
    sweep = {row["min_confidence"]: row for row in holdout.accuracy_sweep(confidence, correct, 0.6)}
    assert sweep[0.6]["current"] and sweep[0.6]["kept"] == 2 and sweep[0.6]["accuracy"] == 0.5
    assert sweep[0.0]["kept_fraction"] == 1.0 and sweep[0.0]["accuracy"] == 0.75
    assert sweep[0.99]["kept"] == 0 and sweep[0.99]["accuracy"] is None


def test_folder_holdout_matches_the_teachers_own_predictions(teacher_directory, holdout_folder):
    metrics = holdout.evaluate(teacher_directory, str(holdout_folder), temperature=2.0, top_k=2,
                               current_min_confidence=0.4)
    assert (metrics["evaluated"], metrics["skipped"], metrics["unreadable"]) == (12, 2, 1)
    model = teacher.load(teacher_directory)
    images, truth = [], []
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((holdout_folder / name).glob("*.png")):
            images.append(path.read_bytes())
            truth.append(label)
    predictions = model.predict(images, temperature=2.0, top_k=2)
    truth = np.array(truth)
    assert metrics["accuracy"] == pytest.approx(np.mean(predictions.top_k_indices[:, 0] == truth))
    assert metrics["top_k_accuracy"] == pytest.approx(np.mean(np.any(predictions.top_k_indices == truth[:, None], 1)))
    assert metrics["mean_confidence"] == pytest.approx(float(predictions.confidence.mean()), rel=1e-5)
    _, expected_error = holdout.reliability(predictions.confidence.astype(np.float64),
                                            predictions.top_k_indices[:, 0] == truth)
    assert metrics["expected_calibration_error"] == pytest.approx(expected_error, abs=1e-6)
    per_class = metrics["per_class"]
    assert [row["images"] for row in per_class] == [4, 4, 4]
    for row in per_class:
        mine = truth == row["class"]
        assert row["accuracy"] == pytest.approx(np.mean(predictions.top_k_indices[mine, 0] == row["class"]))
    limited = holdout.evaluate(teacher_directory, str(holdout_folder), limit=5)
    assert limited["evaluated"] == 5


def test_tfds_holdout(teacher_directory):
    with tfds.testing.mock_data(num_examples=20):
        metrics = holdout.evaluate(teacher_directory, "tfds:cifar10/test", top_k=5)
    assert metrics["evaluated"] + metrics["skipped"] == 20 and metrics["evaluated"] > 0
    assert metrics["top_k"] == 3 and metrics["top_k_accuracy"] == 1.0  # top-3 of 3 classes always hits
    with pytest.raises(ReportError, match="tfds:NAME/SPLIT"):
        holdout.evaluate(teacher_directory, "tfds:cifar10")


def test_report_with_holdout(teacher_directory, holdout_folder, tmp_path):
    labels = tmp_path / "labels"
    write_synthetic_run(labels)
    output = tmp_path / "report.html"
    summary, text = report.build_report(str(labels), str(output), holdout=str(holdout_folder),
                                        teacher_path=teacher_directory)
    assert summary["holdout"]["evaluated"] == 12
    assert "holdout" in text and "ECE (15 bins)" in text
    page = output.read_text()
    assert "Holdout calibration" in page and page.count("<svg") == 6 and "holdout acc.</th>" in page
    assert any("but teacher feedfacecafe0001 labeled this run" in warning for warning in summary["warnings"])
    by_class = {row["class"]: row for row in summary["per_class"]}
    assert by_class[0]["holdout_images"] == 4 and by_class[5]["holdout_images"] == 0
    (tmp_path / "strangers" / "purple").mkdir(parents=True)
    (tmp_path / "strangers" / "purple" / "0.png").write_bytes((holdout_folder / "9" / "0.png").read_bytes())
    with pytest.raises(ReportError, match="none of its images belong to the teacher's classes"):
        report.build_report(str(labels), output_format="text", holdout=str(tmp_path / "strangers"),
                            teacher_path=teacher_directory)
    with pytest.raises(ReportError, match="no images found"):
        report.build_report(str(labels), output_format="text", holdout=str(holdout_folder / "0"),
                            teacher_path=teacher_directory)

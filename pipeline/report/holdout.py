"""Holdout evaluation for the report: is the teacher's confidence a probability of being right?

A holdout is labeled data the teacher did not train on: an image folder with one subfolder
per class named as in teacher.json's class_names (local or gs://), or `tfds:NAME/SPLIT`.
The teacher runs at the labeling run's temperature, since that is the distribution whose
confidence `--min_confidence` thresholds. Only three numbers per image are kept (confidence,
top-1 hit, top-k hit), so memory stays small for holdouts of any size the teacher can afford.
"""

import os

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.report.summary import SWEEP_THRESHOLDS, ReportError

CALIBRATION_BINS = 15
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
BATCH_SIZE = 64


def folder_examples(source):
    """Yields (encoded image bytes, class name) from SOURCE/<class name>/<image>."""
    pattern = FileSystems.join(source, "*", "*")
    paths = sorted(metadata.path for result in FileSystems.match([pattern]) for metadata in result.metadata_list)
    paths = [path for path in paths if path.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise ReportError(f"--holdout={source}: no images found as {pattern} (expected one subfolder per class "
                          f"holding {', '.join(IMAGE_EXTENSIONS)} files).")
    for path in paths:
        with FileSystems.open(path) as handle:
            yield handle.read(), os.path.basename(os.path.dirname(path))


def tfds_examples(spec):
    """Yields (uint8 image, class name) from `tfds:NAME/SPLIT` (the dataset's 'image' and 'label')."""
    import tensorflow_datasets as tfds  # deferred: only this kind of holdout needs it

    name, _, split = spec[len("tfds:"):].partition("/")
    if not name or not split:
        raise ReportError(f"--holdout={spec}: expected tfds:NAME/SPLIT, e.g. tfds:imagenet_v2/test.")
    dataset, info = tfds.load(name, split=split, with_info=True)
    names = info.features["label"].names
    for example in tfds.as_numpy(dataset):
        yield example["image"], names[int(example["label"])]


def examples_of(source):
    return tfds_examples(source) if source.startswith("tfds:") else folder_examples(source)


def _decoded(image):
    """uint8 (H, W, 3), or None for bytes that do not decode (they are counted, not fatal)."""
    if not isinstance(image, bytes):  # a TFDS image: (H, W, 1) grayscale, (H, W, 3) or (H, W, 4)
        return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    from models import preprocessing  # deferred: TensorFlow loads only when a holdout is evaluated

    try:
        return preprocessing.decode_image(image).numpy()
    except Exception:  # noqa: BLE001 - TF raises several error types for corrupt images
        return None


def predict_holdout(teacher, source, temperature, top_k, limit=None):
    """Per-image arrays {confidence, correct (top-1), correct_top_k, truth} and counts of images left out."""
    index_of = {name: index for index, name in enumerate(teacher.metadata.class_names)}
    confidence, correct, correct_top_k, all_truths = [], [], [], []
    skipped, unreadable, evaluated, batch, truths = 0, 0, 0, [], []

    def flush():
        predictions = teacher.predict(batch, temperature=temperature, top_k=top_k)
        truth = np.asarray(truths)[:, np.newaxis]
        confidence.append(predictions.confidence)
        correct.append(predictions.top_k_indices[:, 0] == truth[:, 0])
        correct_top_k.append(np.any(predictions.top_k_indices == truth, axis=1))
        all_truths.append(truth[:, 0])
        batch.clear()
        truths.clear()

    for image, class_name in examples_of(source):
        if limit and evaluated >= limit:
            break
        if class_name not in index_of:
            skipped += 1
            continue
        decoded = _decoded(image)
        if decoded is None:
            unreadable += 1
            continue
        batch.append(decoded)
        truths.append(index_of[class_name])
        evaluated += 1
        if len(batch) == BATCH_SIZE:
            flush()
    if batch:
        flush()
    if not confidence:
        raise ReportError(f"--holdout={source}: none of its images belong to the teacher's classes "
                          f"(teacher classes start {list(index_of)[:5]}; {skipped} images skipped, "
                          f"{unreadable} unreadable).")
    arrays = {"confidence": np.concatenate(confidence).astype(np.float64), "correct": np.concatenate(correct),
              "correct_top_k": np.concatenate(correct_top_k), "truth": np.concatenate(all_truths)}
    return arrays, skipped, unreadable


def per_class_accuracy(truth, correct, num_classes):
    """[{class, images, accuracy}] per class: which classes the teacher's labels are least right about."""
    images = np.bincount(truth, minlength=num_classes)
    hits = np.bincount(truth, weights=correct.astype(np.float64), minlength=num_classes)
    return [{"class": index, "images": int(images[index]),
             "accuracy": float(hits[index] / images[index]) if images[index] else None}
            for index in range(num_classes)]


def reliability(confidence, correct, num_bins=CALIBRATION_BINS):
    """Equal-width confidence bins (lower, upper] with their accuracy, and the expected calibration error."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bin_of = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, num_bins - 1)
    bins, error = [], 0.0
    for index in range(num_bins):
        members = bin_of == index
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else None
        mean_confidence = float(confidence[members].mean()) if count else None
        if count:
            error += count / len(confidence) * abs(accuracy - mean_confidence)
        bins.append({"lower": float(edges[index]), "upper": float(edges[index + 1]), "count": count,
                     "accuracy": accuracy, "confidence": mean_confidence})
    return bins, error


def accuracy_sweep(confidence, correct, current=None):
    """For each min_confidence: how many holdout images it keeps, and how many of those are right."""
    thresholds = sorted(set(SWEEP_THRESHOLDS) | ({round(float(current), 4)} if current is not None else set()))
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        count = int(kept.sum())
        rows.append({"min_confidence": threshold, "kept": count, "kept_fraction": count / len(confidence),
                     "accuracy": float(correct[kept].mean()) if count else None,
                     "current": current is not None and abs(threshold - float(current)) < 1e-9})
    return rows


def evaluate(teacher_path, source, temperature=1.0, top_k=5, current_min_confidence=None, limit=None):
    """The holdout section's numbers (accuracy, reliability bins, ECE, accuracy versus kept fraction)."""
    import teacher as teacher_lib  # deferred: TensorFlow loads only when a holdout is evaluated
    from teacher import metadata as teacher_metadata

    # teacher.json first: only a directory that validates as a teacher is loaded at all. A
    # bare SavedModel (which teacher.load would otherwise accept) runs whatever graph it
    # holds, file reads and writes included, and says nothing about its class names.
    try:
        teacher_metadata.read(teacher_path)
    except teacher_lib.TeacherError as error:
        raise ReportError(f"--teacher={teacher_path}: {error} The holdout needs its class names to match "
                          "holdout folders to classes.") from error
    try:
        model = teacher_lib.load(teacher_path)
    except teacher_lib.TeacherError as error:
        raise ReportError(f"--teacher: {error}") from error
    if model.metadata is None:  # teacher.json vanished between the check and the load
        raise ReportError(f"--teacher={teacher_path} has no teacher.json, so its class names are unknown and "
                          "holdout folders cannot be matched to classes.")
    top_k = min(top_k, model.num_classes)
    arrays, skipped, unreadable = predict_holdout(model, source, temperature, top_k, limit)
    confidence, correct = arrays["confidence"], arrays["correct"]
    bins, error = reliability(confidence, correct)
    return {
        "source": source, "teacher_path": teacher_path, "teacher_id": model.teacher_id,
        "temperature": temperature, "top_k": top_k, "evaluated": int(len(confidence)),
        "skipped": skipped, "unreadable": unreadable,
        "accuracy": float(correct.mean()), "top_k_accuracy": float(arrays["correct_top_k"].mean()),
        "expected_calibration_error": float(error), "mean_confidence": float(confidence.mean()),
        "reliability": bins, "current_min_confidence": current_min_confidence,
        "sweep": accuracy_sweep(confidence, correct, current_min_confidence),
        "per_class": per_class_accuracy(arrays["truth"], correct, model.num_classes),
    }

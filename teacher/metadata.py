"""`teacher.json`: what a teacher directory says about itself, and its content hash (teacher id).

A teacher directory holds:
  saved_model/   SavedModel; signatures `serving_default` (encoded image bytes -> logits)
                 and `serve_images` (uint8 batch -> logits), preprocessing inside
  model.keras    the same weights as a Keras file, for fine-tuning or re-export
  teacher.json   this module's `TeacherMetadata`
"""

import dataclasses
import datetime
import hashlib
import json
import math
import numbers
import os

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
METADATA_FILE = "teacher.json"
# Bounds on what teacher.json may ask of a loader. The family's largest eval size is 320;
# 1024 leaves room for a re-scaled member while a batch of the fixed compiled size still
# fits a worker (64 x 1024^2 x 3 floats = 800 MB). The class bound covers any real label
# space (ImageNet-21k has 21,841) and keeps a crafted count from sizing huge tensors.
MAX_EVAL_IMAGE_SIZE = 1024
MIN_EVAL_IMAGE_SIZE = 8
MAX_NUM_CLASSES = 1_000_000
MAX_CLASS_NAME_LENGTH = 1000
SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"


class TeacherError(ValueError):
    """A teacher directory or a teacher input is not what it should be."""


@dataclasses.dataclass(frozen=True)
class TeacherMetadata:
    model_name: str
    num_classes: int
    class_names: tuple
    eval_image_size: int
    mean_rgb: tuple
    stddev_rgb: tuple
    crop_padding: int
    teacher_id: str
    source: str  # "training-run", "published-weights:<file>" or "random-init"
    random_init: bool
    created: str
    schema_version: int = SCHEMA_VERSION

    @property
    def crop_policy(self):
        return (f"center crop of side {self.eval_image_size}/({self.eval_image_size}+"
                f"{self.crop_padding}) of the shorter side, bicubic resize to {self.eval_image_size}")

    def to_json(self):
        record = dataclasses.asdict(self)
        record["crop_policy"] = self.crop_policy
        record["normalization"] = "(pixel_0_255 - mean_rgb) / stddev_rgb"
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text, where):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise TeacherError(f"{where} is not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise TeacherError(f"{where} must hold a JSON object, not {type(record).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(record) - {"schema_version"})
        if missing:
            raise TeacherError(f"{where} lacks field(s) {missing}; was it written by teacher.export?")
        version = record.get("schema_version", SCHEMA_VERSION)
        if not _is_int(version) or version < 1:
            raise TeacherError(f"{where}: schema_version must be a positive integer, got {version!r}.")
        if version > SCHEMA_VERSION:
            raise TeacherError(f"{where} has schema_version {version}; this code reads "
                               f"up to {SCHEMA_VERSION}. Upgrade the package.")
        _check_values(record, where)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields}
        values["mean_rgb"] = tuple(float(v) for v in values["mean_rgb"])
        values["stddev_rgb"] = tuple(float(v) for v in values["stddev_rgb"])
        return cls(**values)

    def write(self, directory):
        _check_values(json.loads(self.to_json()), f"the {METADATA_FILE} for {directory}")  # what read() accepts
        with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
            f.write(self.to_json())


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(record, where):
    """Types and ranges of every field a loader acts on; raises TeacherError naming the field."""
    import models  # deferred: the family's names, without loading Keras before it is needed

    def fail(field, expected):
        raise TeacherError(f"{where}: {field} must be {expected}, got {record[field]!r:.200}.")

    if not isinstance(record["model_name"], str) or record["model_name"] not in models.CONFIGS:
        fail("model_name", f"one of {sorted(models.CONFIGS)}")
    if not _is_int(record["num_classes"]) or not 1 <= record["num_classes"] <= MAX_NUM_CLASSES:
        fail("num_classes", f"an integer from 1 to {MAX_NUM_CLASSES:,}")
    names = record["class_names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        fail("class_names", "a list of strings")
    if len(names) != record["num_classes"]:
        raise TeacherError(f"{where}: num_classes is {record['num_classes']} but class_names has "
                           f"{len(names)} entries.")
    too_long = next((index for index, name in enumerate(names) if len(name) > MAX_CLASS_NAME_LENGTH), None)
    if too_long is not None:
        raise TeacherError(f"{where}: class_names[{too_long}] is {len(names[too_long]):,} characters long; "
                           f"at most {MAX_CLASS_NAME_LENGTH} are accepted.")
    size = record["eval_image_size"]
    if not _is_int(size) or not MIN_EVAL_IMAGE_SIZE <= size <= MAX_EVAL_IMAGE_SIZE:
        fail("eval_image_size", f"an integer from {MIN_EVAL_IMAGE_SIZE} to {MAX_EVAL_IMAGE_SIZE} (pixels)")
    if not _is_int(record["crop_padding"]) or not 0 <= record["crop_padding"] <= 4 * size:
        fail("crop_padding", f"an integer from 0 to 4 x eval_image_size ({4 * size}) (pixels)")
    for field, in_range, expected in (
            ("mean_rgb", lambda v: 0 <= v <= 255, "3 numbers in [0, 255] (R, G, B on the 0-255 pixel scale)"),
            ("stddev_rgb", lambda v: 0 < v <= 255, "3 numbers in (0, 255] (R, G, B on the 0-255 pixel scale; "
                                                   "normalisation divides by them)")):
        values = record[field]
        if not (isinstance(values, list) and len(values) == 3 and all(_is_number(v) and in_range(v) for v in values)):
            fail(field, expected)
    for field in ("teacher_id", "source", "created"):
        if not isinstance(record[field], str):
            fail(field, "a string")
    if not isinstance(record["random_init"], bool):
        fail("random_init", "true or false")


def read(directory):
    path = os.path.join(directory, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise TeacherError(f"{directory} is not a teacher directory: {METADATA_FILE} is missing "
                           "(write one with `python -m teacher.export`).")
    with tf.io.gfile.GFile(path) as f:
        return TeacherMetadata.from_json(f.read(), path)


def content_hash(model, description):
    """Teacher id: sha256 over the model's description and every weight, in order.

    Independent of file formats and timestamps, so re-exporting the same weights gives the
    same id and any changed weight gives a new one.
    """
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.path}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

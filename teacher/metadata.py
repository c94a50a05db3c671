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
import os

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
METADATA_FILE = "teacher.json"
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
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(record) - {"schema_version"})
        if missing:
            raise TeacherError(f"{where} lacks field(s) {missing}; was it written by teacher.export?")
        if record.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise TeacherError(f"{where} has schema_version {record['schema_version']}; this code reads "
                               f"up to {SCHEMA_VERSION}. Upgrade the package.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields}
        metadata = cls(**values)
        if len(metadata.class_names) != metadata.num_classes:
            raise TeacherError(f"{where}: num_classes is {metadata.num_classes} but class_names has "
                               f"{len(metadata.class_names)} entries.")
        return metadata

    def write(self, directory):
        with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
            f.write(self.to_json())


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

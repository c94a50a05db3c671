"""Writing a teacher directory (see teacher.metadata for its layout)."""

import json
import os

import keras
import tensorflow as tf

import models
from models import preprocessing
from teacher import metadata as metadata_lib
from teacher.metadata import TeacherError

# A training run's model_dir holds the final EMA weights here and its resolved config
# beside them (written by student.train).
TRAINED_KERAS_FILE = "model.keras"
TRAINED_CONFIG_FILE = "config.json"


def class_names_from(spec, num_classes):
    if not spec:
        return tuple(f"class_{i}" for i in range(num_classes))
    if spec.startswith("tfds:"):
        import tensorflow_datasets as tfds  # deferred: only this option needs it

        names = tuple(tfds.builder(spec[len("tfds:"):]).info.features["label"].names)
    else:
        with tf.io.gfile.GFile(spec) as f:
            names = tuple(line.strip() for line in f if line.strip())
    if len(names) != num_classes:
        raise TeacherError(f"--class_names={spec} gives {len(names)} names but the model has "
                           f"{num_classes} classes.")
    return names


def _serving_archive(model, cfg):
    """A Keras ExportArchive whose endpoints preprocess with the shared eval transform."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def logits_of(images):
        return {"logits": tf.cast(model(images, training=False), tf.float32)}

    def transform(image):
        return preprocessing.eval_transform(image, cfg)

    size = cfg.eval_image_size
    out_spec = tf.TensorSpec([size, size, 3], tf.float32)

    def serve_bytes(image_bytes):
        images = tf.map_fn(lambda b: transform(preprocessing.decode_image(b)), image_bytes, fn_output_signature=out_spec)
        return logits_of(images)

    def serve_images(images):
        return logits_of(tf.map_fn(transform, images, fn_output_signature=out_spec))

    archive.add_endpoint("serving_default", serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("serve_images", serve_images,
                         [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    return archive


def export(model, model_name, output, class_names=None, source="training-run", random_init=False,
           overwrite=False):
    """Writes TEACHER_DIR (`output`) for a Keras `model` of the family member `model_name`."""
    cfg = models.config(model_name)
    num_classes = int(model.output_shape[-1])
    if tf.io.gfile.exists(output) and tf.io.gfile.listdir(output):
        if not overwrite:
            raise TeacherError(f"--output={output} exists and is not empty; pass --overwrite to replace it.")
        tf.io.gfile.rmtree(output)
    tf.io.gfile.makedirs(output)
    names = class_names_from(class_names, num_classes) if isinstance(class_names, (str, type(None))) \
        else tuple(class_names)
    if len(names) != num_classes:
        raise TeacherError(f"{len(names)} class names for a model with {num_classes} classes.")
    description = {"model_name": model_name, "num_classes": num_classes, "class_names": names,
                   "eval_image_size": cfg.eval_image_size, "mean_rgb": cfg.mean_rgb,
                   "stddev_rgb": cfg.stddev_rgb, "crop_padding": cfg.crop_padding}
    meta = metadata_lib.TeacherMetadata(
        **description, teacher_id=metadata_lib.content_hash(model, description), source=source,
        random_init=random_init, created=metadata_lib.now())
    _serving_archive(model, cfg).write_out(os.path.join(output, metadata_lib.SAVED_MODEL_DIR), verbose=False)
    model.save(os.path.join(output, metadata_lib.KERAS_FILE))
    meta.write(output)
    return meta


def model_from_training_run(model_dir):
    """(model, model name) from a student.train model_dir, or from a bare .keras file."""
    keras_path = model_dir if model_dir.endswith(".keras") else os.path.join(model_dir, TRAINED_KERAS_FILE)
    if not tf.io.gfile.exists(keras_path):
        raise TeacherError(f"--model_dir={model_dir}: no {TRAINED_KERAS_FILE} there (student.train writes it "
                           "at the end of training), and it is not a .keras file.")
    model = keras.saving.load_model(keras_path, safe_mode=True)
    config_path = os.path.join(os.path.dirname(keras_path), TRAINED_CONFIG_FILE)
    name = model.name
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as f:
            name = json.load(f).get("model", name)
    if name not in models.CONFIGS:
        raise TeacherError(f"{keras_path} holds a model named {name!r}, not one of {sorted(models.CONFIGS)}.")
    return model, name

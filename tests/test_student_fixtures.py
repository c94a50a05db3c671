"""Small data writers shared by the student tests (no tests here).

`write_pseudo_labels` follows the labeling-job output contract exactly (train shards of
tf.train.Example with image/encoded, image/key, image/source_uri, label/top_k_*,
label/confidence, label/entropy, optional label/distribution, label/copy_index, and
manifest.json written last), so the trainer is tested against the format it will read.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def class_image(label, num_classes, rng, size=40):
    """A noisy image whose colour depends on its class, so a tiny model can learn it."""
    hue = np.array([np.cos(2 * np.pi * label / num_classes), np.sin(2 * np.pi * label / num_classes), 0.5])
    base = 128 + 100 * hue
    image = base + rng.normal(0, 20, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def class_images(num_classes, image_size):
    """encoded_image(index, label, rng) of the writers below: a JPEG of class_image."""
    return lambda index, label, rng: encode(class_image(label, num_classes, rng, image_size))


def encode(image, image_format="jpeg"):
    encoder = tf.io.encode_jpeg if image_format == "jpeg" else tf.io.encode_png
    return encoder(image).numpy()


def write_image_folder(root, num_classes=3, per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        folder = os.path.join(root, f"class_{chr(ord('a') + label)}")
        tf.io.gfile.makedirs(folder)
        for index in range(per_class):
            image_format = "png" if index % 3 == 2 else "jpeg"
            path = os.path.join(folder, f"{index}.{'png' if image_format == 'png' else 'jpg'}")
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(encode(class_image(label, num_classes, rng), image_format))
    return root


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def write_labeled_tfrecords(pattern_prefix, num_classes=3, num_examples=12, num_shards=2, label_offset=0, seed=1,
                            image_size=40, encoded_image=None):
    """Writes sharded labeled TFRecords; `encoded_image(index, label, rng) -> bytes` replaces the class images."""
    rng = np.random.default_rng(seed)
    encoded_image = encoded_image or class_images(num_classes, image_size)
    writers = [tf.io.TFRecordWriter(f"{pattern_prefix}-{shard:05d}-of-{num_shards:05d}") for shard in range(num_shards)]
    for index in range(num_examples):
        label = index % num_classes
        example = tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": _bytes([encoded_image(index, label, rng)]),
            "image/class/label": _ints([label + label_offset])}))
        writers[index % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return f"{pattern_prefix}-*"


def teacher_distribution(label, num_classes, rng):
    logits = rng.normal(0, 1, num_classes)
    logits[label] += 3.0
    probabilities = np.exp(logits - logits.max())
    return probabilities / probabilities.sum()


def write_pseudo_labels(out_dir, num_classes=3, num_examples=24, top_k=2, num_shards=2, full_distribution=False,
                        seed=2, manifest_overrides=None, write_manifest=True, image_size=40, encoded_image=None):
    """Writes OUT_DIR as pipeline.label would; returns the train-*.tfrecord glob.

    `encoded_image(index, label, rng) -> bytes` replaces the class images."""
    rng = np.random.default_rng(seed)
    encoded_image = encoded_image or class_images(num_classes, image_size)
    tf.io.gfile.makedirs(out_dir)
    names = [f"train-{shard:05d}-of-{num_shards:05d}.tfrecord" for shard in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, name)) for name in names]
    for index in range(num_examples):
        label = index % num_classes
        image_bytes = encoded_image(index, label, rng)
        distribution = teacher_distribution(label, num_classes, rng)
        order = np.argsort(-distribution)[:top_k]
        feature = {
            "image/encoded": _bytes([image_bytes]),
            "image/key": _bytes([hashlib.sha256(image_bytes).hexdigest().encode()]),
            "image/source_uri": _bytes([f"gs://unlabeled/{index}.jpg".encode()]),
            "label/top_k_indices": _ints(order.tolist()),
            "label/top_k_probabilities": _floats(distribution[order].tolist()),
            "label/confidence": _floats([float(distribution.max())]),
            "label/entropy": _floats([float(-(distribution * np.log(distribution)).sum())]),
            "label/copy_index": _ints([0]),
        }
        if full_distribution:
            feature["label/distribution"] = _floats(distribution.tolist())
        writers[index % num_shards].write(tf.train.Example(features=tf.train.Features(feature=feature))
                                          .SerializeToString())
    for writer in writers:
        writer.close()
    manifest = {
        "schema_version": 1,
        "run_id": "0123456789abcdef",
        "teacher": {"teacher_id": "f" * 16, "model_name": "resnet_rs_tiny", "num_classes": num_classes,
                    "eval_image_size": 32, "path": "/teachers/tiny"},
        "settings": {"top_k": top_k, "temperature": 1.0, "min_confidence": 0.0, "per_class": 0, "balance": False,
                     "dedup": True, "full_distribution": full_distribution, "max_side": 4096,
                     "max_pixels": 1 << 26, "num_shards": num_shards},
        "input": "gs://unlabeled/*.jpg",
        "counts": {"read": num_examples, "rejected": 0, "labeled": num_examples, "below_threshold": 0,
                   "over_cap": 0, "kept": num_examples, "duplicates": 0, "written": num_examples},
        "rejected_by_reason": {},
        "files": {"train": names, "train_counts": [len(range(shard, num_examples, num_shards))
                                                   for shard in range(num_shards)], "rejected": []},
    }
    for key, value in (manifest_overrides or {}).items():
        manifest[key] = value
    if write_manifest:
        with tf.io.gfile.GFile(os.path.join(out_dir, "manifest.json"), "w") as f:
            f.write(json.dumps(manifest))
    return os.path.join(out_dir, "train-*.tfrecord")


def small_flags(labeled, model_dir, **overrides):
    """Flags of a few-step resnet_rs_tiny run (TrainConfig fields)."""
    values = dict(model="resnet_rs_tiny", labeled=labeled, model_dir=model_dir, batch_size=4, train_steps=4,
                  warmup_epochs=0.5, ema_decay=0.5, checkpoint_every=2, log_every=2, eval_batch_size=8,
                  shuffle_buffer=16, jit_compile="graph", strategy="cpu")
    values.update(overrides)
    return values


def run_training_process(flag_values, extra_environment=None, wait=True):
    """Starts `python -m student.train` with `flag_values` in a fresh process."""
    arguments = [sys.executable, "-m", "student.train"]
    for name, value in flag_values.items():
        if isinstance(value, bool):
            arguments.append(f"--{name}" if value else f"--no{name}")
        else:
            arguments.append(f"--{name}={value}")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(extra_environment or {}))
    process = subprocess.Popen(arguments, cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=240)
    return process.returncode, output

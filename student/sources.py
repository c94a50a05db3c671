"""Labeled image sources: a TFDS dataset, TFRecords of tf.train.Example, or an image folder.

Every source yields records `{"image": encoded bytes, "label": int64}` in a fixed order,
for one input pipeline's share (`pipeline_index` of `num_pipelines`, one per host), and
knows how many records that share holds (the epoch size the input position needs).
Images stay encoded until augmentation, so shuffle buffers hold compressed bytes and the
Inception crop can decode only the cropped window of a JPEG.

  tfds:NAME          a TFDS dataset (`--data_dir` for a manually prepared copy such as
                     imagenet2012); splits from --train_split / --eval_split
  GLOB               TFRecord files of tf.train.Example with `image/encoded` and
                     `image/class/label` (minus --label_offset); needs --num_classes
  DIRECTORY          one subfolder per class; class index = position of the subfolder
                     name in sorted order (as Keras' image_dataset_from_directory)
"""

import dataclasses
import os

import tensorflow as tf

from student.config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_READ_PARALLELISM = 16


@dataclasses.dataclass
class LabeledSource:
    description: str
    num_classes: int
    class_names: tuple  # None when the source does not name its classes
    # (pipeline_index, num_pipelines) -> (records_for_epoch, num_records), where
    # records_for_epoch(order_seed=None) is the share's records, in an order that
    # depends only on `order_seed` (an int64 [2] tensor; None keeps the stored order).
    make_records: object

    def records(self, pipeline_index=0, num_pipelines=1):
        return self.make_records(pipeline_index, num_pipelines)


def count_records(dataset):
    """Records in a dataset: its known cardinality, else one pass over it (bytes are not parsed)."""
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def matching_files(pattern, flag):
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ConfigError(f"--{flag}={pattern} matches no files.")
    return files


def tfrecord_records(files, pipeline_index, num_pipelines, parse, order_seed=None):
    """Records of this pipeline's share of `files`, in an order set by `order_seed`.

    Shards by file when there are enough files (each host reads only its own), else by
    record. The file order is permuted by `order_seed`; `interleave(deterministic=True)`
    keeps the record order reproducible across runs.
    """
    if len(files) >= num_pipelines:
        files = tf.constant(files[pipeline_index::num_pipelines])
        if order_seed is not None:
            files = tf.random.experimental.stateless_shuffle(files, order_seed)
        dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=min(int(files.shape[0]), _READ_PARALLELISM),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = tf.data.TFRecordDataset(files).shard(num_pipelines, pipeline_index)
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _tfds(spec, split, data_dir, flag):
    import tensorflow_datasets as tfds  # deferred: only TFDS sources need it

    name = spec[len("tfds:"):]
    builder = tfds.builder(name, data_dir=data_dir)
    label = builder.info.features["label"]

    def make_records(pipeline_index, num_pipelines):
        # even_splits gives each host an exact, disjoint sub-split whose size TFDS knows.
        subsplit = tfds.even_splits(split, n=num_pipelines)[pipeline_index] if num_pipelines > 1 else split
        try:
            dataset = builder.as_dataset(split=subsplit, shuffle_files=False,
                                         decoders={"image": tfds.decode.SkipDecoding()})
        except (AssertionError, ValueError, KeyError) as error:
            raise ConfigError(f"--{flag}={spec} split {subsplit!r}: {error}") from error
        dataset = dataset.map(lambda example: {"image": example["image"], "label": example["label"]})
        # TFDS shuffles records across its files when it prepares a dataset, so the stored
        # file order serves every epoch; the record shuffle buffer does the rest.
        return (lambda order_seed=None: dataset), count_records(dataset)

    return LabeledSource(f"{spec} [{split}]", label.num_classes, tuple(label.names), make_records)


def _image_folder(directory, flag):
    class_names = tuple(sorted(name.rstrip("/") for name in tf.io.gfile.listdir(directory)
                               if tf.io.gfile.isdir(os.path.join(directory, name))))
    paths, labels = [], []
    for index, name in enumerate(class_names):
        for file_name in sorted(tf.io.gfile.listdir(os.path.join(directory, name))):
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(directory, name, file_name))
                labels.append(index)
    if len(class_names) < 2 or not paths:
        raise ConfigError(f"--{flag}={directory}: an image folder needs at least two class subfolders with "
                          f"images ({', '.join(IMAGE_EXTENSIONS)}); found {len(class_names)} subfolders and "
                          f"{len(paths)} images.")

    def make_records(pipeline_index, num_pipelines):
        share = slice(pipeline_index, None, num_pipelines)
        share_paths, share_labels = tf.constant(paths[share]), tf.constant(labels[share], tf.int64)

        def records_for_epoch(order_seed=None):
            # The listing is grouped by class, far beyond what a shuffle buffer can mix, so
            # the whole list (small: paths only) is permuted each epoch.
            order = tf.range(tf.shape(share_paths)[0])
            if order_seed is not None:
                order = tf.random.experimental.stateless_shuffle(order, order_seed)
            return tf.data.Dataset.from_tensor_slices(order).map(
                lambda index: {"image": tf.io.read_file(share_paths[index]), "label": share_labels[index]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        return records_for_epoch, len(paths[share])

    return LabeledSource(f"{directory} (image folder)", len(class_names), class_names, make_records)


def _tfrecords(pattern, num_classes, label_offset, flag):
    files = matching_files(pattern, flag)
    if not num_classes:
        raise ConfigError(f"--{flag}={pattern} is a TFRecord source: pass --num_classes (records do not say "
                          "how many classes there are).")
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return {"image": example["image/encoded"], "label": example["image/class/label"] - label_offset}

    def make_records(pipeline_index, num_pipelines):
        def records_for_epoch(order_seed=None):
            return tfrecord_records(files, pipeline_index, num_pipelines, parse, order_seed)

        return records_for_epoch, count_records(records_for_epoch())

    return LabeledSource(f"{pattern} ({len(files)} TFRecord files)", num_classes, None, make_records)


def open_source(spec, *, split="train", data_dir=None, num_classes=None, label_offset=0, flag="labeled"):
    """The LabeledSource named by `spec` (see the module docstring)."""
    if spec.startswith("tfds:"):
        return _tfds(spec, split, data_dir, flag)
    if tf.io.gfile.isdir(spec):
        return _image_folder(spec, flag)
    return _tfrecords(spec, num_classes, label_offset, flag)

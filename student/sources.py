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
import functools
import os

import tensorflow as tf

from student import epochs
from student.config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_READ_PARALLELISM = 16


@dataclasses.dataclass
class LabeledSource:
    description: str
    num_classes: int
    class_names: tuple  # None when the source does not name its classes
    # (pipeline_index, num_pipelines, known_total) -> epochs.Share of that pipeline; known_total
    # (--labeled_examples, one pipeline) replaces a count that would cost a pass.
    make_share: object

    def share(self, pipeline_index=0, num_pipelines=1, known_total=None):
        return self.make_share(pipeline_index, num_pipelines, known_total)

    def records(self, pipeline_index=0, num_pipelines=1):
        """(records_for_epoch(order_seed=None), record count) of one pipeline's share."""
        share = self.share(pipeline_index, num_pipelines)
        return share.records_for_epoch, share.num_records


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


def read_tfrecord_file(name):
    """The raw records of one TFRecord file: every read of student input goes through here."""
    return tf.data.TFRecordDataset(name)


def count_file_records(files):
    """Records per file, in order: one pass over the files' bytes (nothing parsed), files in parallel."""
    counts = tf.data.Dataset.from_tensor_slices(files).map(
        lambda name: read_tfrecord_file(name).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1),
        num_parallel_calls=_READ_PARALLELISM, deterministic=True)
    return [int(count) for count in counts]


def tfrecord_share(files, file_counts, pipeline_index, num_pipelines, parse, total=None):
    """This pipeline's share of TFRecord `files` as an epochs.Share; `file_counts()` gives the
    records of every file (in order), and is called only when a count is needed.

    Shards by file when there are enough files (each host reads only its own), else every
    pipeline reads every file and keeps every num_pipelines-th record of each.
    """
    if len(files) >= num_pipelines:
        chosen = list(range(pipeline_index, len(files), num_pipelines))

        def read(name, order_seed, skip):
            return read_tfrecord_file(name).skip(skip)

        def count_segments():
            counts = file_counts()
            return [counts[index] for index in chosen]
    else:
        chosen = list(range(len(files)))

        def read(name, order_seed, skip):
            return read_tfrecord_file(name).shard(num_pipelines, pipeline_index).skip(skip)

        def count_segments():
            return [len(range(pipeline_index, count, num_pipelines)) for count in file_counts()]

    return epochs.Share([files[index] for index in chosen], read, parse, count_segments, total)


def tfds_file_share(file_instructions, parse):
    """An epochs.Share with one segment per TFDS file instruction (filename, skip, take): the
    records [skip, skip + take) of one file of a prepared TFDS split, in TFDS's stored order.

    A segment is read as TFDS reads that instruction (TFRecordDataset(file).skip(skip).take(take),
    then `parse` deserializes as as_dataset does), not through builder.as_dataset: Share.epoch
    builds every epoch after the first inside a tf.data flat_map, where a segment arrives as a
    string tensor and as_dataset takes only Python split specs. Calling as_dataset for every file
    up front and choosing among them (choose_from_datasets) would build one TFDS pipeline per
    file each epoch and keep an iterator per file open; the file table read here keeps one file
    open at a time, as for TFRecord sources, and works alike for a Python or a tensor name.
    """
    names = [f"{file.filename}[{file.skip}:{file.skip + file.take}]" for file in file_instructions]
    paths = [os.fspath(file.filename) for file in file_instructions]
    starts = [int(file.skip) for file in file_instructions]
    counts = [int(file.take) for file in file_instructions]

    def read(name, order_seed, skip):
        # A resume's skip inside the file is TFDS's own split slicing of that file (a skip of
        # records, unparsed: TFRecord files have no index); the files before it are not opened.
        index = tf.argmax(tf.cast(tf.equal(tf.constant(names), name), tf.int32))
        skip = tf.cast(skip, tf.int64)
        first = tf.gather(tf.constant(starts, tf.int64), index) + skip
        count = tf.gather(tf.constant(counts, tf.int64), index) - skip
        return read_tfrecord_file(tf.gather(tf.constant(paths), index)).skip(first).take(count)

    return epochs.Share(names, read, parse, lambda: list(counts), sum(counts))


def _tfds_file_instructions(builder, subsplit, total):
    """TFDS's file instructions of `subsplit` (one per file it touches, in read order), or None
    where the share cannot be cut by file: a format other than TFRecord, or split metadata that
    does not describe what as_dataset reads (tfds.testing.mock_data patches as_dataset and leaves
    the splits empty)."""
    file_format = builder.info.file_format
    if getattr(file_format, "value", file_format) not in (None, "tfrecord"):
        return None
    try:
        instructions = list(builder.info.splits[subsplit].file_instructions)
    except (KeyError, ValueError, AssertionError):
        return None
    instructions = [file for file in instructions if file.take > 0]
    if not instructions or sum(file.take for file in instructions) != total:
        return None
    return instructions


def _tfds(spec, split, data_dir, flag):
    import tensorflow_datasets as tfds  # deferred: only TFDS sources need it

    name = spec[len("tfds:"):]
    builder = tfds.builder(name, data_dir=data_dir)
    label = builder.info.features["label"]
    # One file at a time, so that TFDS's read order is its split's order and a slice of the
    # split starts where skipping records would (the default interleaves 16 files).
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    decoders = {"image": tfds.decode.SkipDecoding()}

    def parse(record):
        example = builder.info.features.deserialize_example(record, decoders=decoders)
        return {"image": example["image"], "label": example["label"]}

    def make_share(pipeline_index, num_pipelines, known_total=None):
        # even_splits gives each host an exact, disjoint sub-split whose size TFDS knows.
        subsplit = tfds.even_splits(split, n=num_pipelines)[pipeline_index] if num_pipelines > 1 else split

        def as_dataset(instruction):
            try:
                dataset = builder.as_dataset(split=instruction, shuffle_files=False, read_config=read_config,
                                             decoders=decoders)
            except (AssertionError, ValueError, KeyError) as error:
                raise ConfigError(f"--{flag}={spec} split {subsplit!r}: {error}") from error
            return dataset.map(lambda example: {"image": example["image"], "label": example["label"]})

        whole = as_dataset(subsplit)  # checks the split (nothing is read)
        total = count_records(whole)  # TFDS knows its splits' sizes: no pass

        # TFDS shuffles records across its files when it prepares a dataset; the share is one
        # segment per file (shard) of the sub-split, so each epoch reads the files in an order
        # drawn from its order seed (as for TFRecords), and the window shuffle mixes inside them.
        files = _tfds_file_instructions(builder, subsplit, total)
        if files is not None:
            return tfds_file_share(files, parse)

        # Otherwise (tfds.testing.mock_data, a non-TFRecord format) one segment, read in the
        # stored order every epoch.
        def read(segment_name, order_seed, skip):
            if not skip:
                return whole
            # A resume's skip (a Python int) becomes TFDS split slicing: TFDS's file instructions
            # leave out the files before it and skip records inside one file only.
            instruction = tfds.core.ReadInstruction.from_spec(subsplit) if isinstance(subsplit, str) else subsplit
            sliced, left = [], skip
            for part in instruction.to_absolute(builder.info.splits):
                # TFDS writes a bound at the split's start or end as None.
                split_name, begin = part.splitname, part.from_ or 0
                end = builder.info.splits[split_name].num_examples if part.to is None else part.to
                if end - begin > left:
                    sliced.append(tfds.core.ReadInstruction(split_name, from_=begin + left, to=end, unit="abs"))
                left = max(0, left - (end - begin))
            return as_dataset(sum(sliced[1:], sliced[0]))

        return epochs.Share([subsplit if isinstance(subsplit, str) else str(subsplit)], read, lambda record: record,
                            lambda: [total], total)

    return LabeledSource(f"{spec} [{split}]", label.num_classes, tuple(label.names), make_share)


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

    def make_share(pipeline_index, num_pipelines, known_total=None):
        share = slice(pipeline_index, None, num_pipelines)
        share_paths, share_labels = tf.constant(paths[share]), tf.constant(labels[share], tf.int64)

        def read(segment_name, order_seed=None, skip=0):
            # The listing is grouped by class, far beyond what a shuffle window can mix, so the
            # whole list (small: paths only) is permuted each epoch; a skip drops paths, unread.
            order = tf.range(tf.shape(share_paths)[0])
            if order_seed is not None:
                order = tf.random.experimental.stateless_shuffle(order, order_seed)
            return tf.data.Dataset.from_tensor_slices(order).skip(skip).map(
                lambda index: {"image": tf.io.read_file(share_paths[index]), "label": share_labels[index]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        count = len(paths[share])
        return epochs.Share([directory], read, lambda record: record, lambda: [count], count)

    return LabeledSource(f"{directory} (image folder)", len(class_names), class_names, make_share)


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

    # Counted once per source (one pass, nothing parsed), and only when a count is needed: the
    # epoch size without --labeled_examples, a share of several pipelines, a resume's skip, or
    # the eval set's size (which every evaluation used to recount).
    file_counts = functools.cache(lambda: count_file_records(files))

    def make_share(pipeline_index, num_pipelines, known_total=None):
        return tfrecord_share(files, file_counts, pipeline_index, num_pipelines, parse,
                              known_total if num_pipelines == 1 else None)

    return LabeledSource(f"{pattern} ({len(files)} TFRecord files)", num_classes, None, make_share)


def open_source(spec, *, split="train", data_dir=None, num_classes=None, label_offset=0, flag="labeled"):
    """The LabeledSource named by `spec` (see the module docstring)."""
    if spec.startswith("tfds:"):
        return _tfds(spec, split, data_dir, flag)
    if tf.io.gfile.isdir(spec):
        return _image_folder(spec, flag)
    return _tfrecords(spec, num_classes, label_offset, flag)

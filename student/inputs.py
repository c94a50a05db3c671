"""Input pipelines: deterministic example streams, mixed labeled/pseudo batches, eval batches.

Mixed batches. Every replica's batch holds exactly b labeled and pseudo_ratio * b pseudo
images (b = batch_size / replicas): the two streams are batched separately with
`drop_remainder` and zipped, so shapes are static and the ratio is exact in every global
batch (and on every replica, so BatchNorm sees the same mix everywhere).

Input position (the resume guarantee). Each stream is a pure function of (seed, input
pipeline, position): epoch e of a stream is its records in an order permuted by a seed
derived from e (file order, then a shuffle of `shuffle_buffer`-record windows), and the
example at position p is augmented with a seed derived from p. Step s therefore consumes exactly the
examples at positions [s * B, (s + 1) * B) of each stream (per pipeline), and a run
resumed at step s rebuilds its streams from those positions: it sees the same examples
with the same augmentation as a run that never stopped. Rebuilding reads and parses,
without decoding images, the records of the current epoch that precede the position
(`Dataset.skip` before the augmentation);
`--resume_input=reseed` skips nothing and starts a fresh permutation derived from the
step instead (no replay cost, not bit-identical).
"""

import tensorflow as tf

from student import augment, pseudo

_MAX_EPOCHS = 1 << 40
LABELED_STREAM, PSEUDO_STREAM = 0, 1


def _fold(seed, *values):
    for value in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


def shuffle_windows(records, window, seed):
    """Permutes consecutive windows of `window` records, each by a seed derived from `seed`.

    tf.data's shuffle buffer takes only a Python seed, so inside a per-epoch function it
    would repeat one permutation every epoch; this stateless window shuffle takes a tensor
    seed. With the per-epoch file order and the interleave across files, a window the size
    of a shuffle buffer mixes records as locally as the buffer would, at the same memory
    (one window of encoded records).
    """

    def permute(index, batch):
        count = tf.shape(tf.nest.flatten(batch)[0])[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(count), _fold(seed, index))
        return tf.nest.map_structure(lambda values: tf.gather(values, order), batch)

    return records.batch(window).enumerate().map(permute).unbatch()


def example_stream(records_for_epoch, num_records, start_position, seed, shuffle_buffer):
    """(position, record) pairs from `start_position` on, epoch after epoch, reproducibly.

    `seed` is an int64 [2] tensor naming the stream; `records_for_epoch(order_seed)` is a
    source's records with the file order set by `order_seed`.
    """
    if num_records < 1:
        raise ValueError("An input stream needs at least one record.")
    start_epoch, offset = divmod(int(start_position), int(num_records))

    def one_epoch(epoch):
        epoch_seed = _fold(seed, epoch)
        records = shuffle_windows(records_for_epoch(epoch_seed), shuffle_buffer, _fold(epoch_seed, 1))
        positions = tf.data.Dataset.range(epoch * num_records, (epoch + 1) * num_records)
        return tf.data.Dataset.zip(positions, records)

    return tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(one_epoch).skip(offset)


class InputBuilder:
    """Builds the per-replica train and eval datasets for `distribute_datasets_from_function`."""

    def __init__(self, config, labeled_source, pseudo_source=None, eval_source=None):
        self.config = config
        self.labeled_source = labeled_source
        self.pseudo_source = pseudo_source
        self.eval_source = eval_source
        self.model_config = config.model_config
        self.num_classes = config.num_classes

    def stream_seed(self, stream, pipeline_index, start_step):
        seed = tf.constant([self.config.seed, stream], tf.int64)
        if self.config.resume_input == "reseed" and start_step:
            seed = _fold(seed, start_step)
        return _fold(seed, pipeline_index)

    def start_position(self, start_step, examples_per_step):
        return 0 if self.config.resume_input == "reseed" else start_step * examples_per_step

    def _labeled_batches(self, input_context, start_step, per_replica_batch):
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        records_for_epoch, num_records = self.labeled_source.records(pipeline, pipelines)
        examples_per_step = self.config.batch_size // pipelines
        seed = self.stream_seed(LABELED_STREAM, pipeline, start_step)
        randaugment = augment.make_randaugment(self.model_config)
        num_classes = self.num_classes

        def transform(position, record):
            label = record["label"]
            check = tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64),
                                             message=f"label outside [0, {num_classes}) in --labeled")
            with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
                image = augment.train_transform(record["image"], _fold(seed, position), self.model_config,
                                                randaugment, self.config.crop_min_area, self.config.random_flip)
            return image, tf.cast(label, tf.int32)

        stream = example_stream(records_for_epoch, num_records, self.start_position(start_step, examples_per_step),
                                seed, self.config.shuffle_buffer)
        return stream.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
            per_replica_batch, drop_remainder=True)

    def _pseudo_batches(self, input_context, start_step, per_replica_batch):
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        records_for_epoch, num_records = self.pseudo_source.records(pipeline, pipelines)
        examples_per_step = self.config.pseudo_batch_size // pipelines
        seed = self.stream_seed(PSEUDO_STREAM, pipeline, start_step)
        randaugment = augment.make_randaugment(self.model_config)

        def transform(position, record):
            image = augment.train_transform(record["image"], _fold(seed, position), self.model_config, randaugment,
                                            self.config.crop_min_area, self.config.random_flip)
            return image, pseudo.soft_targets(record, self.num_classes, self.config.hard_pseudo_labels)

        stream = example_stream(records_for_epoch, num_records, self.start_position(start_step, examples_per_step),
                                seed, self.config.shuffle_buffer)
        return stream.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
            per_replica_batch, drop_remainder=True)

    def train_dataset(self, input_context, start_step=0):
        """Per-replica batches {labeled_images, labels[, pseudo_images, pseudo_targets]}."""
        per_replica_batch = input_context.get_per_replica_batch_size(self.config.batch_size)
        labeled = self._labeled_batches(input_context, start_step, per_replica_batch)
        if self.pseudo_source is None:
            dataset = labeled.map(lambda images, labels: {"labeled_images": images, "labels": labels})
        else:
            pseudo_batches = self._pseudo_batches(input_context, start_step,
                                                  per_replica_batch * self.config.pseudo_ratio)
            dataset = tf.data.Dataset.zip(labeled, pseudo_batches).map(
                lambda labeled_batch, pseudo_batch: {
                    "labeled_images": labeled_batch[0], "labels": labeled_batch[1],
                    "pseudo_images": pseudo_batch[0], "pseudo_targets": pseudo_batch[1]})
        return dataset.prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, input_context):
        """Per-replica {images, labels, mask} batches: padded, static shapes, exact counts.

        Every pipeline reads the whole (small) eval set and keeps every num_pipelines-th
        record, then pads with masked batches to one length, so all replicas run the same
        number of steps and each record is counted exactly once.
        """
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        per_replica_batch = input_context.get_per_replica_batch_size(self.config.eval_batch_size)
        replicas_per_pipeline = self.config.eval_batch_size // per_replica_batch // pipelines
        records_for_epoch, num_records = self.eval_source.records(0, 1)
        size = self.model_config.eval_image_size
        records = records_for_epoch().shard(pipelines, pipeline).map(
            lambda record: {"images": augment.eval_transform(record["image"], self.model_config),
                            "labels": tf.cast(record["label"], tf.int32), "mask": tf.constant(1.0)},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        padding = tf.data.Dataset.from_tensors({"images": tf.zeros([size, size, 3]),
                                                "labels": tf.constant(0, tf.int32),
                                                "mask": tf.constant(0.0)}).repeat()
        # Steps for which every pipeline's share (at most ceil(N / pipelines) records) fits.
        steps = -(-(-(-num_records // pipelines)) * pipelines // self.config.eval_batch_size)
        batches_per_pipeline = steps * replicas_per_pipeline
        return records.concatenate(padding).batch(per_replica_batch, drop_remainder=True).take(
            batches_per_pipeline).prefetch(tf.data.AUTOTUNE)

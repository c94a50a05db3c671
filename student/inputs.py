"""Input pipelines: deterministic example streams, mixed labeled/pseudo batches, eval batches.

Mixed batches. Every replica's batch holds exactly b labeled and pseudo_ratio * b pseudo
images (b = batch_size / replicas): the two streams are batched separately with
`drop_remainder` and zipped, so shapes are static and the ratio is exact in every global
batch (and on every replica, so BatchNorm sees the same mix everywhere).

Input position (the resume guarantee). Each stream is a pure function of (seed, input
pipeline, position): epoch e of a stream is its records in an order permuted by a seed
derived from e (file order, then a shuffle of `shuffle_buffer`-record windows inside each
file: student/epochs.py), and the example at position p is augmented with a seed derived
from p. Step s therefore consumes exactly the examples at positions [s * B, (s + 1) * B) of
each stream (per pipeline), and a run resumed at step s rebuilds its streams from those
positions: it sees the same examples with the same augmentation as a run that never
stopped. Rebuilding does not replay the epoch: the files before the position are left out
by their record counts (the labeling manifest's per-shard counts for --pseudo; counted once
for a TFRecord --labeled; known to TFDS, whose files are read alike), and only the records of
the partly used file before the position are read (not parsed, not decoded);
`--resume_input=reseed` skips nothing and starts a fresh permutation derived from the
step instead (not bit-identical).

Undecodable images. A record whose image does not decode (or fails to augment) does not
stop training: it is skipped, and its slot in the batch is filled with a copy of another
image of the same batch (with that image's target), or with a blank image and the
record's own target when no image of the batch decodes. Every skip is printed to stderr
with its stream position and a running count of the stream's skips since training
(re)started, when its batch is prepared (prefetching runs a few batches ahead of the
step); TF's log gets the decoder's error. Because a bad record only changes its own
batch, and the substitute is chosen from that batch alone, step s still consumes exactly
positions [s * B, (s + 1) * B) and a resumed run reproduces an uninterrupted one
bit-for-bit; the price is one image counted twice in that step (rather than a batch that
shifts every later step, which dropping the record would cause). A label outside
[0, num_classes) is not "undecodable": it still stops training. An undecodable eval image
is left out of the eval metrics (and printed).
"""

import sys

import tensorflow as tf

from student import augment, epochs, pseudo

_MAX_EPOCHS = 1 << 40
_EVAL_CHUNK = 64  # eval images decoded together (and their failures counted) in one nested dataset
LABELED_STREAM, PSEUDO_STREAM = 0, 1


_fold = epochs.fold


def example_stream(share, start_position, seed, shuffle_buffer):
    """(position, record) pairs from `start_position` on, epoch after epoch, reproducibly.

    `seed` is an int64 [2] tensor naming the stream; `share` is an epochs.Share. The first
    epoch starts inside itself (epochs.Share.epoch: whole files before the position are not
    read); the later ones are built from the epoch number by one function.
    """
    num_records = share.num_records
    if num_records < 1:
        raise ValueError("An input stream needs at least one record.")
    start_epoch, offset = divmod(int(start_position), int(num_records))

    def one_epoch(epoch, offset=0):
        epoch_seed = _fold(seed, epoch)
        records = share.epoch(epoch_seed, shuffle_buffer, _fold(epoch_seed, 1), offset)
        positions = tf.data.Dataset.range(epoch * num_records + offset, (epoch + 1) * num_records)
        return tf.data.Dataset.zip(positions, records)

    later = tf.data.Dataset.range(start_epoch + 1, _MAX_EPOCHS).flat_map(one_epoch)
    return one_epoch(tf.constant(start_epoch, tf.int64), offset).concatenate(later)


def _assemble(positions, targets, survivor_slots, survivor_images):
    """One batch from the images that decoded (`survivor_*`, in slot order): (images, targets,
    positions of the skipped examples). A skipped slot takes a copy of a decoded example of the
    batch (image and target), dealt in turn; a blank image and its own target when none decoded."""
    size = positions.shape[0]
    decoded = tf.shape(survivor_slots)[0]
    ones = tf.ones_like(survivor_slots)
    present = tf.scatter_nd(survivor_slots[:, None], ones, [size]) > 0
    skipped = tf.boolean_mask(positions, tf.logical_not(present))

    def refill():
        survivor_of_slot = tf.scatter_nd(survivor_slots[:, None], tf.range(decoded), [size])
        turn = tf.cumsum(tf.cast(tf.logical_not(present), tf.int32), exclusive=True)
        pick = tf.where(present, survivor_of_slot, turn % decoded)
        return tf.gather(survivor_images, pick), tf.gather(targets, tf.gather(survivor_slots, pick))

    def blank():
        return tf.zeros([size, *survivor_images.shape[1:]], survivor_images.dtype), targets

    images, targets = tf.cond(tf.equal(decoded, size), lambda: (survivor_images, targets),
                              lambda: tf.cond(decoded > 0, refill, blank))
    images.set_shape([size, *survivor_images.shape[1:]])
    return images, targets, skipped


def decode_batches(examples, image_transform, batch_size, image_spec):
    """(position, encoded image, target) examples -> (images, targets, skipped positions) batches.

    Exactly the batches of `examples.map(image_transform).batch(batch_size)` when every image
    decodes; an image that does not is skipped and its slot refilled from its own batch
    (`_assemble`), so every batch still holds the same positions. The images of a batch are
    decoded in one small nested dataset (tf.data's only way to survive an error is to drop
    the element: `ignore_errors`), two batches at a time. `image_spec` (a tf.TensorSpec) is
    the shape and dtype `image_transform` returns.
    """

    def decode_batch(positions, encoded, targets):
        slots = tf.range(batch_size)
        survivors = (tf.data.Dataset.from_tensor_slices((slots, positions, encoded))
                     .map(lambda slot, position, data: (slot, image_transform(position, data)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                     .ignore_errors(log_warning=True)
                     .batch(batch_size))
        none_decoded = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32),
                                                     tf.zeros([0, *image_spec.shape], image_spec.dtype)))
        return survivors.concatenate(none_decoded).take(1).map(
            lambda survivor_slots, survivor_images: _assemble(positions, targets, survivor_slots, survivor_images))

    return examples.batch(batch_size, drop_remainder=True).interleave(
        decode_batch, cycle_length=2, block_length=1, num_parallel_calls=2, deterministic=True)


def report_skipped(batches, stream_name):
    """(images, targets, skipped positions) batches -> (images, targets), printing each skip."""

    def report(total, batch):
        images, targets, skipped = batch
        count = tf.size(skipped, out_type=tf.int64)
        total += count

        def say():
            message = tf.strings.format(
                "student input: {} undecodable image(s) skipped in the " + stream_name + " stream at position(s) {} "
                "(their batch slots reuse other images of the batch); {} skipped in this stream since training "
                "(re)started", (count, skipped, total), summarize=-1)
            with tf.control_dependencies([tf.print(message, output_stream=sys.stderr)]):
                return tf.identity(total)

        total = tf.cond(count > 0, say, lambda: total)
        return total, (images, targets)

    return batches.scan(tf.constant(0, tf.int64), report)


class InputBuilder:
    """Builds the per-replica train and eval datasets for `distribute_datasets_from_function`."""

    def __init__(self, config, labeled_source, pseudo_source=None, eval_source=None):
        self.config = config
        self.labeled_source = labeled_source
        self.pseudo_source = pseudo_source
        self.eval_source = eval_source
        self.model_config = config.model_config
        self.num_classes = config.num_classes
        self._eval_share_records = {}  # num_pipelines -> the largest pipeline's eval share

    def _largest_eval_share(self, num_pipelines):
        # Every pipeline must run the same number of eval steps, so each needs the largest
        # share's size: found once per run (TFRecord file counts are cached by the source).
        if num_pipelines not in self._eval_share_records:
            self._eval_share_records[num_pipelines] = max(
                self.eval_source.share(pipeline, num_pipelines).num_records for pipeline in range(num_pipelines))
        return self._eval_share_records[num_pipelines]

    def stream_seed(self, stream, pipeline_index, start_step):
        seed = tf.constant([self.config.seed, stream], tf.int64)
        if self.config.resume_input == "reseed" and start_step:
            seed = _fold(seed, start_step)
        return _fold(seed, pipeline_index)

    def start_position(self, start_step, examples_per_step):
        return 0 if self.config.resume_input == "reseed" else start_step * examples_per_step

    def _labeled_batches(self, input_context, start_step, per_replica_batch):
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        # --labeled_examples (counted once at start-up when not given) is the one pipeline's epoch size.
        share = self.labeled_source.share(pipeline, pipelines,
                                          self.config.labeled_examples if pipelines == 1 else None)
        examples_per_step = self.config.batch_size // pipelines
        seed = self.stream_seed(LABELED_STREAM, pipeline, start_step)
        num_classes = self.num_classes

        def target(record):
            # Outside the decode's error handling: a wrong label stops training, it is never skipped.
            label = record["label"]
            check = tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64),
                                             message=f"label outside [0, {num_classes}) in --labeled")
            with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
                return tf.identity(tf.cast(label, tf.int32))

        stream = example_stream(share, self.start_position(start_step, examples_per_step), seed,
                                self.config.shuffle_buffer)
        return self._train_batches(stream, seed, target, per_replica_batch, "labeled")

    def _pseudo_batches(self, input_context, start_step, per_replica_batch):
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        share = self.pseudo_source.share(pipeline, pipelines)
        examples_per_step = self.config.pseudo_batch_size // pipelines
        seed = self.stream_seed(PSEUDO_STREAM, pipeline, start_step)

        def target(record):
            return pseudo.soft_targets(record, self.num_classes, self.config.hard_pseudo_labels,
                                       self.config.pseudo_tail)

        stream = example_stream(share, self.start_position(start_step, examples_per_step), seed,
                                self.config.shuffle_buffer)
        return self._train_batches(stream, seed, target, per_replica_batch, "pseudo")

    def _train_batches(self, stream, seed, target, per_replica_batch, stream_name):
        """(position, record) stream -> (images, targets) batches, skipping undecodable images
        (see the module docstring) without moving any example to another step."""
        randaugment = augment.make_randaugment(self.model_config)
        size = self.model_config.train_image_size
        # uint8 pixels (a quarter of float32's bytes through tf.data and the host-to-device
        # feed); the trainer's compiled step normalises them.
        image_spec = tf.TensorSpec([size, size, 3], tf.uint8)

        def image(position, encoded):
            return augment.train_transform(encoded, _fold(seed, position), self.model_config, randaugment,
                                           self.config.crop_min_area, self.config.random_flip)

        examples = stream.map(lambda position, record: (position, record["image"], target(record)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return report_skipped(decode_batches(examples, image, per_replica_batch, image_spec), stream_name)

    def train_dataset(self, input_context, start_step=0):
        """Per-replica batches {labeled_images, labels[, pseudo_images, pseudo_targets]}; images uint8."""
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
        """Per-replica {images, labels, mask} batches: padded, static shapes, exact counts; images
        are float32 pixels (0..255), normalised by the trainer's eval step.

        Each pipeline (host) reads only its share of the eval set, as the source deals it (its
        own TFRecord files when there are at least as many files as pipelines, a TFDS
        even split, every P-th image of a folder), then pads with masked batches to the
        largest share's length, so all replicas run the same number of steps and each record
        is counted exactly once (an image that does not decode is not counted: it is dropped,
        and printed).
        """
        pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        per_replica_batch = input_context.get_per_replica_batch_size(self.config.eval_batch_size)
        replicas_per_pipeline = self.config.eval_batch_size // per_replica_batch // pipelines
        share = self.eval_source.share(pipeline, pipelines)
        size = self.model_config.eval_image_size

        def decode_chunk(encoded, labels):
            # An eval image that does not decode is dropped: no metric counts it, and it is printed.
            decoded = (tf.data.Dataset.from_tensor_slices((encoded, labels))
                       .map(lambda data, label: (augment.eval_transform(data, self.model_config), label),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                       .ignore_errors(log_warning=True)
                       .batch(_EVAL_CHUNK))
            nothing = tf.data.Dataset.from_tensors((tf.zeros([0, size, size, 3]), tf.zeros([0], tf.int32)))

            def report(images, kept_labels):
                dropped = tf.size(labels) - tf.size(kept_labels)

                def say():
                    message = tf.strings.format("student input: {} undecodable eval image(s) skipped; they are not "
                                                "counted in the eval metrics", dropped)
                    with tf.control_dependencies([tf.print(message, output_stream=sys.stderr)]):
                        return tf.identity(dropped)

                with tf.control_dependencies([tf.cond(dropped > 0, say, lambda: dropped)]):
                    return tf.identity(images), tf.identity(kept_labels)

            return decoded.concatenate(nothing).take(1).map(report).unbatch()

        records = (share.records_for_epoch()
                   .map(lambda record: (record["image"], tf.cast(record["label"], tf.int32)))
                   .batch(_EVAL_CHUNK)
                   .interleave(decode_chunk, cycle_length=2, block_length=1, num_parallel_calls=2,
                               deterministic=True)
                   .map(lambda images, labels: {"images": images, "labels": labels, "mask": tf.constant(1.0)}))
        padding = tf.data.Dataset.from_tensors({"images": tf.zeros([size, size, 3]),
                                                "labels": tf.constant(0, tf.int32),
                                                "mask": tf.constant(0.0)}).repeat()
        # Steps for which every pipeline's share fits.
        steps = -(-self._largest_eval_share(pipelines) * pipelines // self.config.eval_batch_size)
        batches_per_pipeline = steps * replicas_per_pipeline
        return records.concatenate(padding).batch(per_replica_batch, drop_remainder=True).take(
            batches_per_pipeline).prefetch(tf.data.AUTOTUNE)

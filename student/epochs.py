"""One input pipeline's share of a source, read one epoch at a time from any position.

A share is a list of segments (a source's files; one segment for a source read as a whole)
whose records are read in an order that depends only on the epoch: the segments in an
order permuted by the epoch's order seed, each one read whole before the next, its
records permuted in consecutive windows of `window` records that start at the segment's
first record. Because no window crosses a segment, the records of an epoch before any
position are whole segments plus a prefix of one segment: `epoch_records` starts at
a position by dropping whole segments from the list (no reads), and inside the partly used
segment by skipping records (TFRecord files have no index to seek by: at most that
segment's records are read, none parsed).

Segments are read one after another rather than interleaved: an interleave's order
depends on every file's length at once, so a position inside it cannot be reached without
replaying the interleave; reading whole files in a seeded order keeps a position a
(segment, offset) pair. The records of one file are already in a content-hash order
(pipeline/records.py), and the window shuffle mixes locally as a shuffle buffer would.
"""

import dataclasses
import functools
import itertools

import tensorflow as tf

from student.config import ConfigError


def fold(seed, *values):
    for value in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


def shuffle_windows(records, window, seed, first_window=0):
    """Permutes consecutive windows of `window` records, window i by a seed derived from
    (`seed`, `first_window` + i).

    tf.data's shuffle buffer takes only a Python seed, so inside a per-epoch function it
    would repeat one permutation every epoch, and its state cannot be restored at a
    position; this stateless window shuffle takes a tensor seed and restarts at any window.
    """

    def permute(index, batch):
        count = tf.shape(tf.nest.flatten(batch)[0])[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(count), fold(seed, index))
        return tf.nest.map_structure(lambda values: tf.gather(values, order), batch)

    return records.batch(window).enumerate(tf.cast(first_window, tf.int64)).map(permute).unbatch()


@dataclasses.dataclass
class Share:
    """One input pipeline's records.

    `segments`: segment names (file paths; a file and its record range for TFDS), in stored
    order. `read(name, order_seed, skip)`: the raw records of one segment from its record
    `skip` on; `name` is a Python str for the partly used segment a resume starts in and a
    string tensor otherwise (order_seed: the epoch's, for a source that permutes inside its
    one segment). `parse`: raw record -> {"image", ...}.
    `count_segments()`: records per segment; called only to start inside an epoch or when
    `total` is not given (it may cost a pass over the files: sources cache it).
    """
    segments: list
    read: object
    parse: object
    count_segments: object
    total: int = None
    shuffle_segments: bool = True

    @functools.cached_property
    def num_records(self):
        return int(self.total) if self.total is not None else int(sum(self.count_segments()))

    def records_for_epoch(self, order_seed=None):
        """The share's records, segments in the order set by `order_seed` (None: stored order)."""
        return self.epoch(order_seed)

    def epoch(self, order_seed=None, window=None, window_seed=None, offset=0):
        """The epoch's records from position `offset` (a Python int) on: segments in the order
        set by `order_seed`, each permuted in windows of `window` records (None: stored order).

        From a position inside the epoch the segment order is computed here, eagerly
        (dataset_fn runs eagerly): the segments before it are left out of the list, and the
        partly used one is read from a Python skip, which a source may turn into a seek
        instead of a read.
        """
        order = tf.range(len(self.segments), dtype=tf.int64)
        if order_seed is not None and self.shuffle_segments:
            order = tf.random.experimental.stateless_shuffle(order, order_seed)
        rest, first = order, None
        if int(offset):
            order = [int(index) for index in order.numpy()]
            counts = self.count_segments()
            if self.total is not None and sum(counts) != int(self.total):
                # A trusted size (--labeled_examples) that the files contradict would misplace the position.
                raise ConfigError(f"--labeled_examples={self.total} but the files of --labeled hold {sum(counts)} "
                                  "records; the resume position would be wrong. Pass the right count, or leave it "
                                  "out to have it counted.")
            ends = itertools.accumulate(counts[index] for index in order)
            position = next((position for position, end in enumerate(ends) if end > int(offset)), None)
            if position is None:
                raise ValueError(f"Position {offset} is past the {sum(counts)} records of this share.")
            skip = int(offset) - sum(counts[index] for index in order[:position])
            first = self._segment(self.segments[order[position]], order[position], order_seed, skip, window,
                                  window_seed)
            rest = tf.constant(order[position + 1:], tf.int64)
        names = tf.constant(self.segments)
        records = tf.data.Dataset.from_tensor_slices(rest).flat_map(
            lambda index: self._segment(tf.gather(names, index), index, order_seed, 0, window, window_seed))
        if first is not None:
            records = first.concatenate(records)
        return records.map(self.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _segment(self, name, index, order_seed, skip, window, window_seed):
        """One segment's records from its record `skip` on."""
        if window is None:
            return self.read(name, order_seed, skip)
        # Windows start at the segment's first record, so the read starts at a window.
        first_window = skip // window
        records = self.read(name, order_seed, first_window * window)
        windows = shuffle_windows(records, window, fold(window_seed, index), first_window)
        return windows.skip(skip - first_window * window)

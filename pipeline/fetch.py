"""Fetch: an index entry's input bytes, read again from where stage 1 read them.

Selection (stage 2) never carries image bytes through a shuffle: the shard writer and the
report's examples fetch the bytes of the few images they need, by URI, straight from storage:
  image files   read again with the same guards (--max_bytes, regular files only);
  TFRecord      one seek to the record's byte offset (stored in the index), one frame read;
  TFDS          the one-example slice `SPLIT[i:i+1]` (one dataset per image: fine for a
                validation split, slow for 100M images; convert those to TFRecord files).
The bytes must hash to the key the teacher labeled; an input changed or removed since is a
`FetchFailed` with its reason, which the writer counts (`unavailable`), never a wrong record.
"""

import concurrent.futures
import collections
import os

from pipeline import decode, records, sources
from pipeline.file_reads import InputRejected, is_local, open_local, open_uri, read_file


class FetchFailed(Exception):
    """The input behind an index entry can no longer be read as the image that was labeled."""


def _tfrecord_bytes(uri, offset, source):
    """The image of the record at byte `offset` of a TFRecord file.

    Image files (read_file) go through pipeline.storage's shared client, one GET each; this
    stays on Beam's reader: the index knows where the frame starts but not its length (its
    `input_bytes` are the image's, not the Example's around it), so one bounded ranged GET
    could not be sized exactly without a second request for the frame's header. So a TFRecord
    fetch from gs:// still pays Beam's per-open client and metadata request."""
    import tensorflow as tf

    path = uri.rsplit("#", 1)[0]
    handle = open_local(path) if is_local(path) else open_uri(path)
    with handle:
        handle.seek(offset)
        for payload in records.read_frames(handle, path, start=offset):
            data, problem = sources.image_from_example(tf, payload, source.image_feature, source.max_bytes)
            if data is None:
                raise FetchFailed(problem)
            return data
    raise FetchFailed(f"no record at byte {offset} of {path}")


def _tfds_bytes(uri, source):
    import tensorflow_datasets as tfds

    name, split = sources.parse_tfds(source.spec)
    position = int(uri.rsplit("/", 1)[1])
    dataset = tfds.builder(name, data_dir=source.data_dir).as_dataset(
        split=f"{split}[{position}:{position + 1}]", shuffle_files=False,
        decoders={source.image_feature: tfds.decode.SkipDecoding()})
    examples = list(dataset.take(position + 1).as_numpy_iterator())
    # TFDS honours the slice (one example). A builder that ignores it, as
    # tfds.testing.mock_data's does, yields the split from its start: take the position-th.
    example = examples[0] if len(examples) == 1 else examples[position]
    return example[source.image_feature]


def input_bytes(prediction, source):
    """The bytes `prediction` was computed from. Raises FetchFailed saying why not."""
    try:
        if source.input_format == "tfrecord":
            data = _tfrecord_bytes(prediction.uri, prediction.offset, source)
        elif source.input_format == "tfds":
            data = _tfds_bytes(prediction.uri, source)
        else:
            data = read_file(prediction.uri, source.max_bytes)
    except (InputRejected, FetchFailed) as error:
        raise FetchFailed(str(error)) from error
    except Exception as error:  # noqa: BLE001 - a missing object, a permission, a network error: say which
        raise FetchFailed(f"unreadable: {type(error).__name__}: {error}") from error
    if decode.content_key(data) != prediction.key:
        raise FetchFailed(f"changed: the input's content is not what the teacher labeled (sha256 "
                          f"{prediction.key[:12]}...)")
    return data


def stored_image(prediction, source, max_pixels, max_side, memory=None, thumbnail=False):
    """(bytes to store in the record, thumbnail or None), decoded from the fetched input
    exactly as a one-pass job would have. Raises FetchFailed."""
    data = input_bytes(prediction, source)
    try:
        _, stored, small = decode.decode(data, max_pixels, max_side, memory, store=not thumbnail,
                                         thumbnail=thumbnail)
    except decode.ImageRejected as error:  # decoded in stage 1, so only memory or a changed library
        raise FetchFailed(str(error)) from error
    return small if thumbnail else stored


REMOTE_FETCH_THREADS = 16


def parallel_reads(source, threads, uri):
    """Reads in flight for one writer whose inputs look like `uri`: `threads` (--fetch_threads)
    when set; else (0, the default) REMOTE_FETCH_THREADS for an object store, where each read
    waits tens of ms on the network, and one per core for local files, which the page cache
    serves in microseconds, so that more threads only take turns at the GIL (measured on a
    2-core AMD EPYC Zen 3, stage 2 over 25,000 local 24 px PNGs: 62 CPU s with 16 threads,
    49 CPU s with 2, and less wall time). 0 for TFDS input: its builders are not documented as
    safe to share across threads (tfds.testing.mock_data's patched file system, for one, works
    in one thread only)."""
    if source.input_format == "tfds":
        return 0
    if threads:
        return threads
    return (os.cpu_count() or 1) if is_local(uri) else REMOTE_FETCH_THREADS


def fetched_in_order(items, fetch, threads, ahead):
    """Yields (item, fetch(item) or the FetchFailed) in the order of `items`, with `threads`
    reads in parallel (0: in this thread) and at most `ahead` results waiting, so memory holds
    a few images."""
    if not threads:
        for item in items:
            try:
                yield item, fetch(item)
            except FetchFailed as failed:
                yield item, failed
        return
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="fetch") as pool:
        window = collections.deque()

        def settle(entry):
            item, future = entry
            try:
                return item, future.result()
            except FetchFailed as failed:
                return item, failed

        for item in items:
            window.append((item, pool.submit(fetch, item)))
            if len(window) > ahead:
                yield settle(window.popleft())
        while window:
            yield settle(window.popleft())

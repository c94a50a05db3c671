"""ReadImages: every kind of --input, as `Candidate(uri, bytes)` plus `Rejection`s.

Kinds (chosen by --input_format, or guessed from --input):
  images    a file glob, local or gs:// (`gs://bucket/photos/*`); files whose extension is
            not an image extension are rejected, not skipped, so the accounting closes.
  list      a text file with one URI (or glob) per line; blank and `#` lines are ignored.
  tfrecord  a glob of TFRecord files of `tf.train.Example` holding encoded images.
  tfds      `tfds:NAME/SPLIT` (a prepared TFDS dataset; --data_dir points at it).

Scale: a glob is expanded by Beam's MatchAll (one listing per pattern) and the matched
files are reshuffled so they are read on every worker in parallel. For inputs too large to
list in one call (the paper's 130M images), give a list file: Beam splits text files, so
the URIs are read, and the files fetched, by all workers at once. TFRecord files and TFDS
index ranges are read in parallel, one file or range per task.

Hostile inputs. Every input read is either a Candidate or a Rejection naming why, so the
manifest's accounting closes whatever the folder holds. pipeline.file_reads guards each
read (--max_bytes from the listing's size and on every read, non-regular local files,
unstattable entries, failed matches); images inside TFRecord and TFDS records are held to
the same --max_bytes. List files: each line is a URI exactly as written (only the line
break is removed); a line holding `*`, `?` or `[` is read literally when a file has that
name, else matched as a glob.
"""

import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import records
from pipeline.file_reads import (  # noqa: F401 - InputRejected and read_file are this module's API too
    GLOB_CHARACTERS, IMAGE_EXTENSIONS, InputRejected, has_image_extension, is_local, match_pattern, open_local,
    open_uri, read_file)
from pipeline.elements import Candidate, Rejection

INPUT_FORMATS = ("auto", "images", "list", "tfrecord", "tfds")
REJECTED = "rejected"
DEFAULT_MAX_BYTES = 64 << 20


def guess_format(spec):
    if spec.startswith("tfds:"):
        return "tfds"
    lowered = spec.lower()
    if ".tfrecord" in lowered:
        return "tfrecord"
    if lowered.endswith((".txt", ".lst", ".list")):
        return "list"
    return "images"


def parse_tfds(spec):
    """`tfds:NAME/SPLIT` -> (NAME, SPLIT); NAME may carry a config (`NAME/CONFIG/SPLIT`)."""
    body = spec[len("tfds:"):]
    if "/" not in body:
        raise ValueError(f"--input={spec}: expected tfds:NAME/SPLIT, e.g. tfds:imagenet2012/train.")
    name, split = body.rsplit("/", 1)
    return name, split


class _MatchInput(beam.DoFn):
    """A glob -> (path, size) per matched file, plus rejections for what cannot be listed."""

    def __init__(self):
        self._rejected = beam.metrics.Metrics.counter("ReadImages", "rejected")

    def process(self, pattern):
        matched, problems = match_pattern(pattern)
        yield from matched
        for uri, reason in problems:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, reason, "read"))


class _ReadImageFile(beam.DoFn):
    """A matched (path, size) -> its bytes, or a rejection saying why not."""

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES):
        self._max_bytes = max_bytes
        self._read = beam.metrics.Metrics.counter("ReadImages", "read")
        self._rejected = beam.metrics.Metrics.counter("ReadImages", "rejected")

    def _reject(self, uri, reason):
        self._rejected.inc()
        return beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, reason, "read"))

    def process(self, item):
        uri, size = item
        if not has_image_extension(uri):
            yield self._reject(uri, f"unsupported_extension: {os.path.splitext(uri)[1] or '(none)'} is not one "
                                    f"of {', '.join(IMAGE_EXTENSIONS)} (any case)")
            return
        try:
            data = read_file(uri, self._max_bytes, size)
        except InputRejected as rejection:
            yield self._reject(uri, str(rejection))
            return
        self._read.inc()
        yield Candidate(uri, data)


class _ExpandListedUri(beam.DoFn):
    """A listed line -> (path, size or None) for what it names (itself, or its glob's matches),
    or rejections."""

    def __init__(self):
        self._rejected = beam.metrics.Metrics.counter("ReadImages", "rejected")

    def process(self, uri):
        if not any(c in uri for c in GLOB_CHARACTERS):
            yield uri, None
            return
        try:
            literal = FileSystems.exists(uri) or (is_local(uri) and os.path.islink(uri))
        except Exception:  # noqa: BLE001 - a name the filesystem cannot even ask about is matched as a glob
            literal = False
        if literal:  # a file named `a[1].png` is that file, not a glob matching `a1.png`
            yield uri, None
            return
        matched, problems = match_pattern(uri)
        yield from matched
        for path, reason in problems:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(path, reason, "read"))


def _is_listing(line):
    """Blank (or whitespace-only) lines and `#` comments list nothing."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _listed_uris(pcoll, list_path):
    """URIs of a list file; a URI listed more than once is read once, the rest rejected.

    A URI is its line exactly (ReadFromText removes only the line break): names may begin
    or end with spaces, and a path is never edited into another file's name.
    """
    counted = (pcoll
               | "ReadList" >> beam.io.ReadFromText(list_path)
               | "DropBlankAndComments" >> beam.Filter(_is_listing)
               | "CountListings" >> beam.combiners.Count.PerElement())

    def first_and_repeats(item):
        uri, times = item
        yield uri
        for _ in range(times - 1):
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, "duplicate_uri: listed more than once", "read"))

    return counted | "SplitRepeats" >> beam.FlatMap(first_and_repeats).with_outputs(REJECTED, main="uris")


class _ReadTfrecordFile(beam.DoFn):
    """A TFRecord file -> one Candidate per record (`path#index`), images from `image_feature`.

    A file that cannot be opened is one rejection; so is the rest of a file after a corrupt
    frame (the records before it are read). Images over `max_bytes` are rejected.
    """

    def __init__(self, image_feature, max_bytes=DEFAULT_MAX_BYTES):
        self._image_feature = image_feature
        self._max_bytes = max_bytes

    def process(self, item):
        import tensorflow as tf  # deferred: only this source parses Examples

        path, _ = item
        try:
            handle = open_local(path) if is_local(path) else open_uri(path)
        except InputRejected as rejection:
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(path, str(rejection), "read"))
            return
        except Exception as error:  # a remote file that is missing or forbidden: the reason says which
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
                path, f"unreadable: {type(error).__name__}: {error}", "read"))
            return
        with handle:
            try:
                for index, payload in enumerate(records.read_frames(handle, path)):
                    uri = f"{path}#{index}"
                    try:
                        feature = tf.train.Example.FromString(payload).features.feature
                        data = feature[self._image_feature].bytes_list.value[0] \
                            if self._image_feature in feature else None
                    except Exception as error:
                        data, problem = None, f"not_an_example: {type(error).__name__}: {error}"
                    else:
                        problem = f"no_image_feature: the Example has no bytes feature '{self._image_feature}'"
                    if data is not None and len(data) > self._max_bytes:
                        data, problem = None, f"too_large: {len(data)} bytes > --max_bytes={self._max_bytes}"
                    if data is None:
                        yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, problem, "read"))
                    else:
                        yield Candidate(uri, data)
            except ValueError as error:
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(path, f"corrupt_tfrecord: {error}", "read"))
            except OSError as error:  # the file failed while being read
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
                    path, f"unreadable: {type(error).__name__}: {error}", "read"))


def tfds_ranges(name, split, data_dir, num_ranges):
    """Splits a TFDS split into `num_ranges` contiguous [start, end) index ranges."""
    import tensorflow_datasets as tfds  # deferred: only this source needs TFDS

    try:
        total = tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples
    except KeyError:
        # Split sizes unknown (no prepared metadata, e.g. TFDS mock data): one range, read whole.
        return [(0, None)]
    bounds = [round(i * total / num_ranges) for i in range(num_ranges + 1)]
    return [(start, end) for start, end in zip(bounds, bounds[1:]) if end > start]


class _ReadTfdsRange(beam.DoFn):
    """An index range of a TFDS split -> Candidates `tfds:NAME/SPLIT/INDEX` (bytes not decoded)."""

    def __init__(self, name, split, data_dir, image_feature, max_bytes=DEFAULT_MAX_BYTES):
        self._name, self._split, self._data_dir, self._image_feature = name, split, data_dir, image_feature
        self._max_bytes = max_bytes

    def process(self, index_range):
        import tensorflow_datasets as tfds

        start, end = index_range
        builder = tfds.builder(self._name, data_dir=self._data_dir)
        split = self._split if end is None else f"{self._split}[{start}:{end}]"
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={self._image_feature: tfds.decode.SkipDecoding()})
        for offset, example in enumerate(dataset.as_numpy_iterator()):
            uri, data = f"tfds:{self._name}/{self._split}/{start + offset}", example[self._image_feature]
            if len(data) > self._max_bytes:
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
                    uri, f"too_large: {len(data)} bytes > --max_bytes={self._max_bytes}", "read"))
            else:
                yield Candidate(uri, data)


class ReadImages(beam.PTransform):
    """--input -> (candidates, rejections)."""

    def __init__(self, spec, input_format="auto", image_feature=None, data_dir=None,
                 tfds_ranges_count=64, max_bytes=DEFAULT_MAX_BYTES):
        super().__init__()
        self._max_bytes = max_bytes
        self._spec = spec
        self._format = guess_format(spec) if input_format == "auto" else input_format
        # TFDS image datasets name the feature "image"; Examples written by TF tools "image/encoded".
        self._image_feature = image_feature or ("image" if self._format == "tfds" else "image/encoded")
        self._data_dir = data_dir
        self._tfds_ranges = tfds_ranges_count
        # Set by expand: PCollections whose elements are each one input found before any file
        # is read (globs matched, lists expanded), the job's total for pipeline/progress.py.
        # Empty for TFRecord and TFDS input, whose image count is only known once read.
        self.found = ()

    def expand(self, pbegin):
        rejections = []
        if self._format == "tfds":
            name, split = parse_tfds(self._spec)
            read = (pbegin
                    | "TfdsRanges" >> beam.Create(tfds_ranges(name, split, self._data_dir, self._tfds_ranges))
                    | "SpreadRanges" >> beam.Reshuffle()
                    | "ReadTfds" >> beam.ParDo(_ReadTfdsRange(name, split, self._data_dir, self._image_feature,
                                                              self._max_bytes)).with_outputs(
                        REJECTED, main="candidates"))
            return read.candidates, read[REJECTED]
        if self._format == "list":
            listed = _listed_uris(pbegin, self._spec)
            rejections.append(listed[REJECTED])
            expanded = listed.uris | "ExpandGlobs" >> beam.ParDo(_ExpandListedUri()).with_outputs(REJECTED, main="uris")
            rejections.append(expanded[REJECTED])
            paths = expanded.uris
        else:
            matched = (pbegin
                       | "Pattern" >> beam.Create([self._spec])
                       | "Match" >> beam.ParDo(_MatchInput()).with_outputs(REJECTED, main="paths"))
            rejections.append(matched[REJECTED])
            paths = matched.paths
        if self._format != "tfrecord":  # a TFRecord path is a file of unknown many images
            self.found = (*rejections, paths)
        paths = paths | "SpreadReads" >> beam.Reshuffle()
        reader = (_ReadTfrecordFile(self._image_feature, self._max_bytes) if self._format == "tfrecord"
                  else _ReadImageFile(self._max_bytes))
        read = paths | "ReadFiles" >> beam.ParDo(reader).with_outputs(REJECTED, main="candidates")
        rejections.append(read[REJECTED])
        return read.candidates, tuple(rejections) | "MergeReadRejections" >> beam.Flatten()

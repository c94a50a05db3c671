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
"""

import os

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import records
from pipeline.elements import Candidate, Rejection

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
INPUT_FORMATS = ("auto", "images", "list", "tfrecord", "tfds")
REJECTED = "rejected"
_GLOB_CHARACTERS = "*?["


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


def _open(uri):
    return FileSystems.open(uri, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED)


def _has_image_extension(uri):
    return os.path.splitext(uri)[1].lower() in IMAGE_EXTENSIONS


class _ReadImageFile(beam.DoFn):
    """A matched path -> its bytes, or a rejection saying why not."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("ReadImages", "read")
        self._rejected = beam.metrics.Metrics.counter("ReadImages", "rejected")

    def _reject(self, uri, reason):
        self._rejected.inc()
        return beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, reason, "read"))

    def process(self, uri):
        if not _has_image_extension(uri):
            yield self._reject(uri, f"unsupported_extension: {os.path.splitext(uri)[1] or '(none)'} is not one "
                                    f"of {', '.join(IMAGE_EXTENSIONS)} (any case)")
            return
        try:
            with _open(uri) as handle:
                data = handle.read()
        except Exception as error:  # missing, a directory, permission: the reason says which
            yield self._reject(uri, f"unreadable: {type(error).__name__}: {error}")
            return
        self._read.inc()
        yield Candidate(uri, data)


class _ExpandListedUri(beam.DoFn):
    """A listed line -> the paths it names (itself, or its glob's matches), or a rejection."""

    def process(self, uri):
        if not any(c in uri for c in _GLOB_CHARACTERS):
            yield uri
            return
        metadata = FileSystems.match([uri])[0].metadata_list
        if not metadata:
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, "not_found: the glob matches no file", "read"))
        for item in metadata:
            yield item.path


def _listed_uris(pcoll, list_path):
    """URIs of a list file; a URI listed more than once is read once, the rest rejected."""
    counted = (pcoll
               | "ReadList" >> beam.io.ReadFromText(list_path)
               | "StripLines" >> beam.Map(str.strip)
               | "DropBlankAndComments" >> beam.Filter(lambda line: line and not line.startswith("#"))
               | "CountListings" >> beam.combiners.Count.PerElement())

    def first_and_repeats(item):
        uri, times = item
        yield uri
        for _ in range(times - 1):
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, "duplicate_uri: listed more than once", "read"))

    return counted | "SplitRepeats" >> beam.FlatMap(first_and_repeats).with_outputs(REJECTED, main="uris")


class _ReadTfrecordFile(beam.DoFn):
    """A TFRecord file -> one Candidate per record (`path#index`), images from `image_feature`."""

    def __init__(self, image_feature):
        self._image_feature = image_feature

    def process(self, path):
        import tensorflow as tf  # deferred: only this source parses Examples

        with _open(path) as handle:
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
                    if data is None:
                        yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, problem, "read"))
                    else:
                        yield Candidate(uri, data)
            except ValueError as error:
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(path, f"corrupt_tfrecord: {error}", "read"))


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

    def __init__(self, name, split, data_dir, image_feature):
        self._name, self._split, self._data_dir, self._image_feature = name, split, data_dir, image_feature

    def process(self, index_range):
        import tensorflow_datasets as tfds

        start, end = index_range
        builder = tfds.builder(self._name, data_dir=self._data_dir)
        split = self._split if end is None else f"{self._split}[{start}:{end}]"
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={self._image_feature: tfds.decode.SkipDecoding()})
        for offset, example in enumerate(dataset.as_numpy_iterator()):
            yield Candidate(f"tfds:{self._name}/{self._split}/{start + offset}", example[self._image_feature])


class ReadImages(beam.PTransform):
    """--input -> (candidates, rejections)."""

    def __init__(self, spec, input_format="auto", image_feature=None, data_dir=None,
                 tfds_ranges_count=64):
        super().__init__()
        self._spec = spec
        self._format = guess_format(spec) if input_format == "auto" else input_format
        # TFDS image datasets name the feature "image"; Examples written by TF tools "image/encoded".
        self._image_feature = image_feature or ("image" if self._format == "tfds" else "image/encoded")
        self._data_dir = data_dir
        self._tfds_ranges = tfds_ranges_count

    def expand(self, pbegin):
        rejections = []
        if self._format == "tfds":
            name, split = parse_tfds(self._spec)
            candidates = (pbegin
                          | "TfdsRanges" >> beam.Create(tfds_ranges(name, split, self._data_dir, self._tfds_ranges))
                          | "SpreadRanges" >> beam.Reshuffle()
                          | "ReadTfds" >> beam.ParDo(_ReadTfdsRange(name, split, self._data_dir, self._image_feature)))
            return candidates, pbegin | "NoRejections" >> beam.Create([])
        if self._format == "list":
            listed = _listed_uris(pbegin, self._spec)
            rejections.append(listed[REJECTED])
            expanded = listed.uris | "ExpandGlobs" >> beam.ParDo(_ExpandListedUri()).with_outputs(REJECTED, main="uris")
            rejections.append(expanded[REJECTED])
            paths = expanded.uris
        else:
            paths = (pbegin
                     | "Pattern" >> beam.Create([self._spec])
                     | "Match" >> fileio.MatchAll()
                     | "Paths" >> beam.Map(lambda metadata: metadata.path))
        paths = paths | "SpreadReads" >> beam.Reshuffle()
        reader = _ReadTfrecordFile(self._image_feature) if self._format == "tfrecord" else _ReadImageFile()
        read = paths | "ReadFiles" >> beam.ParDo(reader).with_outputs(REJECTED, main="candidates")
        rejections.append(read[REJECTED])
        return read.candidates, tuple(rejections) | "MergeReadRejections" >> beam.Flatten()

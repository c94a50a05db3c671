"""Every kind of --input: listed as units of work (ListUnits), read as `Candidate(uri, bytes)`
or `Rejection` (read_unit) by stage 1's shard workers.

Kinds (chosen by --input_format, or guessed from --input):
  images    a file glob, local or gs:// (`gs://bucket/photos/*`); files whose extension is
            not an image extension are rejected, not skipped, so the accounting closes.
  list      a text file with one URI (or glob) per line; blank and `#` lines are ignored.
  tfrecord  a glob of TFRecord files of `tf.train.Example` holding encoded images.
  tfds      `tfds:NAME/SPLIT` (a prepared TFDS dataset; --data_dir points at it).

Scale: a glob is matched in one listing; for inputs too large to list in one call (the
paper's 130M images), give a list file: Beam splits text files, so the URIs are read by all
workers at once. Listing yields URIs and sizes only; the files themselves are read by the
prediction shard that holds them (pipeline/predict.py), in parallel across shards and
threads. A TFRecord file or a TFDS index range is one unit, read sequentially.

Hostile inputs. Every input read is either a Candidate or a Rejection naming why, so the
manifest's accounting closes whatever the folder holds. pipeline.file_reads guards each
read (--max_bytes from the listing's size and on every read, non-regular local files,
unstattable entries, failed matches); images inside TFRecord and TFDS records are held to
the same --max_bytes. List files: each line is a URI exactly as written (only the line
break is removed); a line holding `*`, `?` or `[` is read literally when a file has that
name, else matched as a glob. A path the list reaches more than once (a line repeated, a
line and a glob matching it, overlapping globs) is one unit of work; each further reach is
a `duplicate_uri` rejection, so the accounting still counts every line and every match.
"""

import os
from typing import NamedTuple

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


# How a list reaches a path, as a unit: a glob's match, ("file", path, its listed size); a
# glob's listing problem (an entry it cannot stat, a pattern matching nothing), ("rejected",
# path, reason); a literal line, ("file", path, None): not statted (a 130M-line list would cost
# a stat per line).
DUPLICATE_URI = "duplicate_uri: named more than once by the list (by its lines and its globs' matches); read once"


class _ExpandListedUri(beam.DoFn):
    """A listed line -> a unit per path it reaches: itself, or its glob's matches and listing
    problems. Paths are deduplicated after this (one_unit_per_path), not lines before it: a
    literal line and a glob, or two globs, may reach one file."""

    def process(self, uri):
        if not any(c in uri for c in GLOB_CHARACTERS):
            yield "file", uri, None
            return
        try:
            literal = FileSystems.exists(uri) or (is_local(uri) and os.path.islink(uri))
        except Exception:  # noqa: BLE001 - a name the filesystem cannot even ask about is matched as a glob
            literal = False
        if literal:  # a file named `a[1].png` is that file, not a glob matching `a1.png`
            yield "file", uri, None
            return
        matched, problems = match_pattern(uri)
        for path, size in matched:
            yield "file", path, size
        for path, reason in problems:
            yield "rejected", path, reason


def _preference(unit):
    """Sort key: of the units that reach one path, the least is the one kept. A match's size
    is known (read_file refuses an oversized file unopened), a listing problem's reason is
    known too, a literal line knows nothing. Ties break on the value, so the choice never
    depends on the order the units arrive in (the larger of two sizes: a file grown between
    listings)."""
    kind, _, value = unit
    if kind == "rejected":
        return 1, 0, value
    return (0, -value, "") if value is not None else (2, 0, "")


def one_unit_per_path(units):
    """The units of a bucket -> one unit per path (unit_id), the least by _preference, and a
    duplicate_uri rejection per further unit of that path, so read = rejected + labeled
    counts every line and match.

    Why in the bucket and not in a shuffle of its own: every unit of one path hashes to the
    same bucket (buckets.bucket_of), whose group holds them all anyway, so deduplicating there
    costs no shuffle (a CombinePerKey over paths cost one of every listed URI: ~67 B a line, and
    at 200k lines ~0.3 KB of local runner memory each)."""
    by_path = {}
    for unit in units:
        by_path.setdefault(unit_id(unit), []).append(unit)
    for reaches in by_path.values():
        yield min(reaches, key=_preference)
        for _ in range(len(reaches) - 1):
            yield "rejected", reaches[0][1], DUPLICATE_URI


def _is_listing(line):
    """Blank (or whitespace-only) lines and `#` comments list nothing."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _listed_units(pcoll, list_path):
    """The units of a list file: one per path each line reaches; a path reached more than once
    has several, merged in its bucket (one_unit_per_path).

    A URI is its line exactly (ReadFromText removes only the line break): names may begin
    or end with spaces, and a path is never edited into another file's name.
    """
    return (pcoll
            | "ReadList" >> beam.io.ReadFromText(list_path)
            | "DropBlankAndComments" >> beam.Filter(_is_listing)
            | "ExpandGlobs" >> beam.ParDo(_ExpandListedUri()))


def read_image_file(uri, size, max_bytes):
    """A matched image file -> Candidate, or Rejection saying why not."""
    if not has_image_extension(uri):
        return Rejection(uri, f"unsupported_extension: {os.path.splitext(uri)[1] or '(none)'} is not one "
                              f"of {', '.join(IMAGE_EXTENSIONS)} (any case)", "read")
    try:
        return Candidate(uri, read_file(uri, max_bytes, size))
    except InputRejected as rejection:
        return Rejection(uri, str(rejection), "read")


def read_tfrecord_file(path, image_feature, max_bytes):
    """A TFRecord file -> one Candidate per record (`path#index`, with its byte offset), or Rejections.

    A file that cannot be opened is one rejection; so is the rest of a file after a corrupt
    frame (the records before it are read). Images over `max_bytes` are rejected.
    """
    import tensorflow as tf  # deferred: only this source parses Examples

    try:
        handle = open_local(path) if is_local(path) else open_uri(path)
    except InputRejected as rejection:
        yield Rejection(path, str(rejection), "read")
        return
    except Exception as error:  # a remote file that is missing or forbidden: the reason says which
        yield Rejection(path, f"unreadable: {type(error).__name__}: {error}", "read")
        return
    with handle:
        try:
            for index, (offset, payload) in enumerate(records.read_frames(handle, path, with_offsets=True)):
                uri = f"{path}#{index}"
                data, problem = image_from_example(tf, payload, image_feature, max_bytes)
                yield Rejection(uri, problem, "read") if data is None else Candidate(uri, data, offset)
        except ValueError as error:
            yield Rejection(path, f"corrupt_tfrecord: {error}", "read")
        except OSError as error:  # the file failed while being read
            yield Rejection(path, f"unreadable: {type(error).__name__}: {error}", "read")


def image_from_example(tf, payload, image_feature, max_bytes):
    """(image bytes, None) from a serialized Example, or (None, the rejection reason)."""
    try:
        feature = tf.train.Example.FromString(payload).features.feature
        data = feature[image_feature].bytes_list.value[0] if image_feature in feature else None
    except Exception as error:
        return None, f"not_an_example: {type(error).__name__}: {error}"
    if data is None:
        return None, f"no_image_feature: the Example has no bytes feature '{image_feature}'"
    if len(data) > max_bytes:
        return None, f"too_large: {len(data)} bytes > --max_bytes={max_bytes}"
    return data, None


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


def read_tfds_range(spec, data_dir, image_feature, start, end, max_bytes):
    """An index range of a TFDS split -> Candidates `tfds:NAME/SPLIT/INDEX` (bytes not decoded)."""
    import tensorflow_datasets as tfds

    name, split = parse_tfds(spec)
    builder = tfds.builder(name, data_dir=data_dir)
    sliced = split if end is None else f"{split}[{start}:{end}]"
    dataset = builder.as_dataset(split=sliced, shuffle_files=False,
                                 decoders={image_feature: tfds.decode.SkipDecoding()})
    for offset, example in enumerate(dataset.as_numpy_iterator()):
        uri, data = f"tfds:{name}/{split}/{start + offset}", example[image_feature]
        if len(data) > max_bytes:
            yield Rejection(uri, f"too_large: {len(data)} bytes > --max_bytes={max_bytes}", "read")
        else:
            yield Candidate(uri, data)


def default_image_feature(input_format):
    # TFDS image datasets name the feature "image"; Examples written by TF tools "image/encoded".
    return "image" if input_format == "tfds" else "image/encoded"


def unit_id(unit):
    """What assigns a unit of work to its prediction shard: its URI, or a TFDS range's start."""
    return str(unit[1])


def read_unit(unit, source):
    """Yields the Candidates and Rejections of one unit of work.

    Units: ("file", uri, size or None), ("tfrecord", path, size), ("tfds", start, end), and
    ("rejected", uri, reason) for what listing already rejected. `source` is an InputSource.
    """
    kind = unit[0]
    if kind == "file":
        yield read_image_file(unit[1], unit[2], source.max_bytes)
    elif kind == "tfrecord":
        yield from read_tfrecord_file(unit[1], source.image_feature, source.max_bytes)
    elif kind == "tfds":
        yield from read_tfds_range(source.spec, source.data_dir, source.image_feature, unit[1], unit[2],
                                   source.max_bytes)
    else:
        yield Rejection(unit[1], unit[2], "read")


class InputSource(NamedTuple):
    """How to read --input: what read_unit and pipeline.fetch need besides a unit."""

    spec: str
    input_format: str
    image_feature: str
    data_dir: str
    tfds_ranges: int
    max_bytes: int


def input_source(spec, input_format, image_feature, data_dir, tfds_ranges_count, max_bytes):
    kind = guess_format(spec) if input_format == "auto" else input_format
    return InputSource(spec, kind, image_feature or default_image_feature(kind), data_dir, tfds_ranges_count,
                       max_bytes)


class ListUnits(beam.PTransform):
    """--input -> units of work (see read_unit); listing problems are units too ("rejected"), so
    they land in a prediction shard and the accounting closes. A list file's lines may reach one
    path several times: its bucket keeps one unit of it (one_unit_per_path).

    Nothing is read here but listings: an image's bytes are read by the stage that labels it.
    `found` is set by expand: PCollections of one element per input found before any file is
    read (pipeline/progress.py's total); empty for TFRecord and TFDS input.
    """

    def __init__(self, source):
        super().__init__()
        self._source = source
        self.found = ()

    def expand(self, pbegin):
        source = self._source
        if source.input_format == "tfds":
            name, split = parse_tfds(source.spec)
            return (pbegin | "TfdsRanges" >> beam.Create(
                [("tfds", start, end) for start, end in tfds_ranges(name, split, source.data_dir, source.tfds_ranges)]))
        if source.input_format == "list":
            units = _listed_units(pbegin, source.spec)
            self.found = (units,)
            return units
        rejections = []
        matched = (pbegin
                   | "Pattern" >> beam.Create([source.spec])
                   | "Match" >> beam.ParDo(_MatchInput()).with_outputs(REJECTED, main="paths"))
        rejections.append(matched[REJECTED])
        paths = matched.paths
        kind = "tfrecord" if source.input_format == "tfrecord" else "file"
        if kind == "file":  # a TFRecord path is a file of unknown many images
            self.found = (*rejections, paths)
        units = paths | "AsUnits" >> beam.MapTuple(lambda uri, size: (kind, uri, size))
        rejected = (tuple(rejections)
                    | "MergeListingRejections" >> beam.Flatten()
                    | "RejectionsAsUnits" >> beam.Map(lambda r: ("rejected", r.uri, r.reason)))
        return (units, rejected) | "AllUnits" >> beam.Flatten()

"""pipeline.write's train shards: each selected image is fetched once, whatever its copy count;
its copies are spread through its content's shard; a lost image loses each of its copies. And
how many rejected-* shards stage 2 writes."""

import hashlib
import os
import tempfile

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline import decode, options, records, select, sources, write
from pipeline.elements import Prediction, Rejection

COPIES = {"a": 1, "b": 3, "c": 5, "d": 2}  # 11 records from 4 images


def _photos(folder):
    folder.mkdir()
    rng = np.random.default_rng(1)
    predictions = []
    for index, (name, copies) in enumerate(COPIES.items()):
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        predictions.append((Prediction(hashlib.sha256(data).hexdigest(), str(path), -1, len(data), (index % 2,),
                                       (0.75,), 0.75, 0.5), copies))
    return predictions


def _write(selected, directory, num_shards, threads=4, lost=()):
    """Writes the shards; `lost`: the (file name, copy index, reason) of UNAVAILABLE, checked."""
    source = sources.input_source(str(directory / "*.png"), "images", None, None, 1, 1 << 20)
    pipeline = TestPipeline()
    count = pipeline | "Count" >> beam.Create([num_shards])
    written = (pipeline
               | beam.Create(selected)
               | write.WriteTrainShards(str(directory.parent / "out"), source, 10_000, 0,
                                        decode.DEFAULT_DECODE_MEMORY_MB, threads, count))
    unavailable = written[write.UNAVAILABLE] | beam.MapTuple(
        lambda prediction, copy, reason: (os.path.basename(prediction.uri), copy,
                                          write.unavailable_rejection((prediction, copy, reason)).reason))
    assert_that(unavailable, equal_to(list(lost)))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("WriteRecords"))["counters"]}
    return counters


def _read(directory, num_shards):
    return [[records.parse_example(payload) for payload in records.read_tfrecords(
        str(directory / records.shard_name(records.TRAIN_PREFIX, index, num_shards, records.TRAIN_SUFFIX)))]
        for index in range(num_shards)]


@pytest.fixture()
def spill_dir(tmp_path, monkeypatch):
    """(tempfile's directory, where the writer's spill stores live (Beam's own temporary files
    too) and must be gone afterwards; the bytes spilled)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    puts = []
    put = write._SpillStore.put
    monkeypatch.setattr(write._SpillStore, "put", lambda self, position, data: (puts.append(data), put(
        self, position, data))[1])
    return spill, puts


def _spill_stores(spill_dir):
    return list(spill_dir[0].glob("train-copies-*"))


@pytest.mark.parametrize("threads", [0, 4])
def test_each_image_is_fetched_once_and_its_copies_are_spread_through_its_shard(tmp_path, spill_dir, threads):
    selected = _photos(tmp_path / "photos")
    counters = _write(selected, tmp_path / "photos", 1, threads)
    (shard,) = _read(tmp_path / "out", 1)
    assert counters["images_fetched"] == len(COPIES) and counters["train_written"] == sum(COPIES.values()) == len(shard)
    assert not _spill_stores(spill_dir)
    assert len(spill_dir[1]) == sum(copies > 1 for copies in COPIES.values()), "kept on disk for later copies"
    by_uri = {prediction.uri: (prediction, copies) for prediction, copies in selected}
    got = [(record["image/source_uri"], record["label/copy_index"]) for record in shard]
    assert sorted(got) == sorted((uri, copy) for uri, (_, copies) in by_uri.items() for copy in range(copies))
    want = sorted(got, key=lambda item: records.record_order(by_uri[item[0]][0].key, *item))
    assert got == want, "records in content order"
    assert any(a[0] == c[0] != b[0] for a, b, c in zip(got, got[1:], got[2:])), "copies spread, not side by side"
    for record in shard:  # every copy holds the image's stored bytes
        copy0 = next(r for r in shard if r["image/source_uri"] == record["image/source_uri"]
                     and r["label/copy_index"] == 0)
        assert record["image/encoded"] == copy0["image/encoded"] and record["image/key"] == copy0["image/key"]


def test_placement_follows_the_content_key_only(tmp_path, spill_dir):
    selected = _photos(tmp_path / "photos")
    _write(selected, tmp_path / "photos", 3)
    shards = _read(tmp_path / "out", 3)
    for index, shard in enumerate(shards):
        assert all(records.shard_of(record["image/key"], 3) == index for record in shard)
    assert sum(len(shard) for shard in shards) == sum(COPIES.values())


def test_identical_contents_are_ordered_by_uri_and_the_writer_holds_no_shard_in_memory(tmp_path, spill_dir):
    """Two files of one content (a duplicate kept without --dedup), each with copies: every
    record's hash ties with the other file's copy of the same index, and the URI breaks the tie,
    as records.record_order says. The shard's elements waited in a file (_ShardOnDisk), gone after."""
    selected = _photos(tmp_path / "photos")
    twin = tmp_path / "photos" / "0-twin-of-c.png"  # sorts before c.png
    twin.write_bytes((tmp_path / "photos" / "c.png").read_bytes())
    prediction, copies = next(item for item in selected if item[0].uri.endswith("c.png"))
    selected.append((prediction._replace(uri=str(twin)), copies))
    opened = []
    init = write._ShardOnDisk.__init__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(write._ShardOnDisk, "__init__", lambda self, items: (init(self, items), opened.append(self))[0])
        counters = _write(selected, tmp_path / "photos", 1)
    (shard,) = _read(tmp_path / "out", 1)
    assert counters["images_fetched"] == len(COPIES) + 1 and len(shard) == sum(COPIES.values()) + copies
    keys = {str(tmp_path / "photos" / f"{name}.png"): item[0].key for name, item in zip(COPIES, selected)}
    keys[str(twin)] = prediction.key
    got = [(record["image/source_uri"], record["label/copy_index"]) for record in shard]
    assert got == sorted(got, key=lambda item: records.record_order(keys[item[0]], *item))
    for copy in range(copies):  # each tie: the twin's record right before c.png's
        at = got.index((str(twin), copy))
        assert got[at + 1] == (prediction.uri, copy)
    assert len(opened) == 1 and opened[0]._file.closed


def test_an_image_lost_since_stage_1_loses_each_of_its_copies(tmp_path, spill_dir):
    selected = _photos(tmp_path / "photos")
    os.remove(tmp_path / "photos" / "c.png")  # five copies
    # One rejection line per lost copy (the manifest's accounting counts them), from one fetch.
    path = tmp_path / "photos" / "c.png"
    reason = f"unavailable: unreadable: FileNotFoundError: [Errno 2] No such file or directory: '{path}'"
    lost = [("c.png", 0, reason)] + [("c.png", copy, f"{reason} (copy {copy})") for copy in range(1, 5)]
    counters = _write(selected, tmp_path / "photos", 1, lost=lost)
    assert counters["images_fetched"] == len(COPIES), "fetched (and failed) once"
    assert counters["unavailable"] == 5 and counters["train_written"] == sum(COPIES.values()) - 5
    assert len(_read(tmp_path / "out", 1)[0]) == sum(COPIES.values()) - 5
    assert not _spill_stores(spill_dir)


@pytest.mark.parametrize("rejected_shards, dedup, counts, expected", [
    (0, False, None, 1),  # a --dry_run builds stage 2 before stage 1 has counted anything
    (0, False, {"read": 10, "labeled": 10, "rejected": 0}, 1),
    (0, False, {"read": 3_000_000, "labeled": 500_000, "rejected": 2_500_000}, 3),
    (0, False, {"read": 2_000_000, "labeled": 1_999_990, "rejected": 10}, 1),
    (0, True, {"read": 2_000_000, "labeled": 1_999_990, "rejected": 10}, 2),  # any labeled entry may be a duplicate
    (7, True, {"read": 2_000_000, "labeled": 1_999_990, "rejected": 10}, 7),  # given: fixed
])
def test_rejection_shards_follow_the_expected_lines_unless_given(rejected_shards, dedup, counts, expected):
    settings = options.LabelSettings(teacher="", input="", output="", rejected_shards=rejected_shards, dedup=dedup)
    assert select.rejected_shard_count(settings, counts) == expected


def test_every_shard_is_written_and_listed_empty_ones_included(tmp_path):
    """More shards than images (train) or lines (rejected): every `-of-N` file exists, the empty
    ones with no bytes, and the files output lists each shard once with its count."""
    selected = _photos(tmp_path / "photos")[:2]
    source = sources.input_source(str(tmp_path / "photos" / "*.png"), "images", None, None, 1, 1 << 20)
    out = tmp_path / "out"
    pipeline = TestPipeline()
    train = (pipeline
             | "Selected" >> beam.Create(selected)
             | write.WriteTrainShards(str(out), source, 10_000, 0, decode.DEFAULT_DECODE_MEMORY_MB, 2,
                                      pipeline | "Count" >> beam.Create([6])))
    rejected = (pipeline
                | "Rejections" >> beam.Create([Rejection("gs://b/x.jpg", "decode: not an image", "decode")])
                | write.WriteRejections(str(out), 3))
    train_names = [records.shard_name(records.TRAIN_PREFIX, index, 6, records.TRAIN_SUFFIX) for index in range(6)]
    rejected_names = [records.shard_name(records.REJECTED_PREFIX, index, 3, records.REJECTED_SUFFIX)
                      for index in range(3)]
    assert_that(train["files"] | beam.MapTuple(lambda name, count: name), equal_to(train_names), label="Train")
    assert_that(train["files"] | beam.MapTuple(lambda name, count: count) | beam.CombineGlobally(sum),
                equal_to([sum(copies for _, copies in selected)]), label="TrainCount")
    assert_that(rejected | beam.MapTuple(lambda name, count: (name, count)) | beam.Filter(lambda item: item[1]),
                equal_to([(records.shard_name(records.REJECTED_PREFIX, records.shard_of(
                    "gs://b/x.jpg|decode|decode: not an image", 3), 3, records.REJECTED_SUFFIX), 1)]),
                label="RejectedCount")
    assert_that(rejected | beam.MapTuple(lambda name, count: name), equal_to(rejected_names), label="Rejected")
    pipeline.run().wait_until_finish()
    assert sorted(path.name for path in out.iterdir()) == sorted(train_names + rejected_names)
    sizes = [(out / name).stat().st_size for name in train_names + rejected_names]
    assert sizes.count(0) == 9 - len({records.shard_of(p.key, 6) for p, _ in selected}) - 1

"""Hostile inputs: every bad input is a counted rejection, every stored record decodes for the
student, and the student's input survives a record it cannot decode.

The labeling corpus holds what the issue tracker reported: a PNG whose compressed data ends
early (Pillow fills the rows with zeros, TensorFlow refuses it), a FIFO named x.jpg, a
symlink to /dev/zero, a sparse file over --max_bytes, TIFF and ICO content named .png,
dangling and looping symlinks, a file named `a[1].png`, globs in a list file that match
nothing or cannot be matched, and TFRecord files that cannot be opened.
"""

import hashlib
import io
import os
import re
import socket
import struct
import zlib

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from conftest import png_header_claiming
from pipeline import label, records, selection, sources
from pipeline.elements import Prediction
from student import augment, inputs, pseudo, train
from student import sources as student_sources
from test_label import _read_run
from student.config import TrainConfig
from test_student_fixtures import small_flags, write_image_folder, write_labeled_tfrecords, write_pseudo_labels

MAX_BYTES = 1 << 20


def _encode(pixels, image_format, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _pixels(seed, height=24, width=32):
    return np.random.default_rng(seed).integers(1, 256, (height, width, 3), dtype=np.uint8)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def truncated_idat_png(height=24, width=32, rows=12):
    """A well-framed RGB PNG whose (complete, valid) zlib stream holds only `rows` of its rows:
    Pillow decodes it with the missing rows zero, tf.io.decode_image refuses it."""
    pixels = _pixels(7, height, width)
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


TRUNCATED_PNG = truncated_idat_png()


def _pillow_pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_truncated_png_is_what_the_issue_describes():
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(TRUNCATED_PNG, channels=3)
    pixels = _pillow_pixels(TRUNCATED_PNG)
    assert pixels.shape == (24, 32, 3) and not pixels[12:].any() and pixels[:12].all()


# --- the labeling job -------------------------------------------------------------------


def _example(image_bytes=None):
    feature = {} if image_bytes is None else {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _unix_socket(path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the socket file stays after the socket is closed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, {run name: (input, {uri: (reason category, detail)}, [good uris], flags)})."""
    # Today's reader would block on the FIFO forever or read /dev/zero until memory runs out.
    assert "max_bytes" in sources.InputSource._fields, \
        "reading has no --max_bytes guard: this corpus would hang or exhaust the machine's memory"
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "corpus"
    folder.mkdir()
    good = {
        "gradient.jpg": _encode(_pixels(1), "JPEG", quality=90),
        "noise.png": _encode(_pixels(2), "PNG"),
        "a[1].png": _encode(_pixels(3), "PNG"),
        "truncated_idat.png": TRUNCATED_PNG,  # labeled: Pillow reads it; what is stored is re-encoded
    }
    for name, data in good.items():
        (folder / name).write_bytes(data)
    (folder / "noise_copy.png").write_bytes(good["noise.png"])
    os.mkfifo(folder / "x.jpg")
    os.symlink("/dev/zero", folder / "z.png")
    with open(folder / "huge.png", "wb") as handle:
        handle.truncate(2 * MAX_BYTES)  # sparse: no disk blocks
    (folder / "tiff_named.png").write_bytes(_encode(_pixels(4), "TIFF"))
    (folder / "ico_named.png").write_bytes(_encode(_pixels(5), "ICO"))
    os.symlink(folder / "no-such-file.jpg", folder / "dangling.jpg")
    os.symlink("loop.png", folder / "loop.png")
    (folder / "folder.jpg").mkdir()  # a directory: globs list files only, a list file can name it
    (folder / "memory_bomb.png").write_bytes(png_header_claiming(3000, 3000))  # fine for --max_pixels, not memory

    def at(name):
        return f"{folder}/{name}"

    bad_files = {
        at("x.jpg"): ("not_a_regular_file", "FIFO"),
        at("z.png"): ("not_a_regular_file", "character device, through a symlink to /dev/zero"),
        at("huge.png"): ("too_large", f"{2 * MAX_BYTES} bytes > --max_bytes={MAX_BYTES}"),
        at("tiff_named.png"): ("undecodable", "not a JPEG, PNG, GIF, BMP or WEBP image"),
        at("ico_named.png"): ("undecodable", "not a JPEG, PNG, GIF, BMP or WEBP image"),
        at("dangling.jpg"): ("unreadable", "dangling symlink"),
        at("loop.png"): ("unreadable", "symbolic links"),
        at("memory_bomb.png"): ("too_much_memory", "3000x3000 RGB needs about 205 MB > --decode_memory_mb=100"),
    }
    runs = {"folder": (f"{folder}/*", {**bad_files, at("noise_copy.png"): ("duplicate", "same content as")},
                       [at(name) for name in good], ["--dedup"])}

    listing = root / "inputs.txt"
    listed_bad = {**bad_files,
                  at("folder.jpg"): ("not_a_regular_file", "a directory"),
                  at("missing-*.png"): ("not_found", "the glob matches no file"),
                  at("[z-a]*.png"): ("match_failed", "bad character range")}
    listing.write_text("# every hostile case, and globs that match nothing or cannot be matched\n\n"
                       + "".join(f"{uri}\n" for uri in [at(name) for name in good] + list(listed_bad)))
    runs["list"] = (str(listing), listed_bad, [at(name) for name in good], [])

    shards = root / "records"
    shards.mkdir()
    images = shards / "images.tfrecord"
    with tf.io.TFRecordWriter(str(images)) as writer:
        writer.write(_example(good["gradient.jpg"]))
        writer.write(_example(TRUNCATED_PNG))
        writer.write(_example(good["noise.png"]))
        writer.write(_example((folder / "tiff_named.png").read_bytes()))
        writer.write(_example(np.random.default_rng(0).bytes(MAX_BYTES + 1)))
        writer.write(_example())
    _unix_socket(shards / "socket.tfrecord")
    os.mkfifo(shards / "fifo.tfrecord")
    os.symlink(shards / "gone.tfrecord.orig", shards / "gone.tfrecord")
    record_bad = {
        f"{images}#3": ("undecodable", "not a JPEG, PNG, GIF, BMP or WEBP image"),
        f"{images}#4": ("too_large", f"{MAX_BYTES + 1} bytes > --max_bytes={MAX_BYTES}"),
        f"{images}#5": ("no_image_feature", "image/encoded"),
        f"{shards}/socket.tfrecord": ("not_a_regular_file", "a socket"),
        f"{shards}/fifo.tfrecord": ("not_a_regular_file", "FIFO"),
        f"{shards}/gone.tfrecord": ("unreadable", "dangling symlink"),
    }
    runs["tfrecord"] = (f"{shards}/*.tfrecord", record_bad, [f"{images}#{i}" for i in range(3)], [])
    return root, runs



@pytest.mark.parametrize("run", ["folder", "list", "tfrecord"])
def test_every_hostile_input_is_a_counted_rejection_with_its_reason(corpus, tiny_teacher, run):
    root, runs = corpus
    source, bad, good, flags = runs[run]
    output = root / f"out-{run}"
    label.run([f"--teacher={tiny_teacher}", f"--input={source}", f"--output={output}", "--num_shards=2",
               "--allow_random_teacher",
               "--max_batch_size=8", "--min_confidence=0", "--per_class=0",  # every good input written once
               f"--max_bytes={MAX_BYTES}", "--decode_memory_mb=100", *flags])
    manifest, written, rejected = _read_run(output)
    counts = manifest["counts"]
    assert counts["read"] == counts["rejected"] + counts["labeled"] == len(bad) + len(good), counts
    reasons = {r["uri"]: r["reason"] for r in rejected}
    assert sorted(reasons) == sorted(bad)
    for uri, (category, detail) in bad.items():
        assert reasons[uri].startswith(f"{category}: ") and detail in reasons[uri], (uri, reasons[uri])
    assert sum(manifest["rejected_by_reason"].values()) == len(bad)
    assert sorted(r["image/source_uri"] for r in written) == sorted(good)

    # Every record decodes with the student's decoders; the truncated PNG to what the teacher saw.
    for record in written:
        encoded = record["image/encoded"]
        decoded = tf.io.decode_image(encoded, channels=3).numpy()
        crop = augment.random_crop(tf.constant(encoded), tf.constant([1, 2], tf.int64))
        assert crop.shape[-1] == 3 and decoded.shape[-1] == 3
        if "truncated" in record["image/source_uri"] or record["image/source_uri"].endswith("#1"):
            np.testing.assert_array_equal(decoded, _pillow_pixels(TRUNCATED_PNG))
            assert record["image/key"] == hashlib.sha256(TRUNCATED_PNG).hexdigest()


@pytest.mark.parametrize("value", [0, 1 << 31])
def test_max_bytes_is_range_checked(tiny_teacher, tmp_path, value):
    (tmp_path / "one.png").write_bytes(_encode(_pixels(1), "PNG"))
    with pytest.raises(label.UsageError, match=f"--max_bytes={value} must be between 1 and 2147483647"):
        label.run([f"--teacher={tiny_teacher}", f"--input={tmp_path}/*.png", f"--output={tmp_path}/o",
                   f"--max_bytes={value}"])


def test_reads_are_bounded_even_when_the_size_lies(tmp_path):
    # /proc files say 0 bytes and hold more; /dev/zero never ends.
    with pytest.raises(sources.InputRejected, match="^too_large: more than --max_bytes=16 bytes read"):
        sources.read_file("/proc/self/status", 16)
    with pytest.raises(sources.InputRejected, match="^not_a_regular_file: a character device"):
        sources.read_file("/dev/zero", MAX_BYTES)
    with pytest.raises(sources.InputRejected, match=f"^too_large: {MAX_BYTES + 1} bytes > --max_bytes={MAX_BYTES}"):
        sources.read_file(str(tmp_path / "never-opened"), MAX_BYTES, size=MAX_BYTES + 1)
    (tmp_path / "ok.bin").write_bytes(b"x" * 16)
    assert sources.read_file(str(tmp_path / "ok.bin"), 16) == b"x" * 16


def test_dedup_groups_index_entries_not_image_bytes():
    copies = 300
    entries = [Prediction("placeholder-key", f"{index:04d}.png", -1, 11000, (0,), (0.9,), 0.9, 0.1)
               for index in range(copies)]
    pipeline = test_pipeline.TestPipeline()
    result = (pipeline
              | beam.Create(entries + [Prediction("other-key", "other.png", -1, 5, (1,), (0.8,), 0.8, 0.2)])
              | "Dedup" >> selection.Deduplicate())
    grouped = []

    class FindGroupings(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if node.full_label.startswith("Dedup/") and isinstance(node.transform, beam.GroupByKey):
                grouped.append(node.full_label)

    pipeline.visit(FindGroupings())
    # Dedup runs in selection, on index entries (labels and URIs): no image bytes exist there to
    # group. It groups URIs in a combiner (the survivor of each content), then packed entries
    # with their survivor: no group is ever sorted, and a hot content is routed by lookup.
    assert grouped == ["Dedup/SmallestUri/CombinePerKey(PreCombineFn)/GroupByKey",
                       "Dedup/SmallestUri/CombinePerKey(PostCombineFn)/GroupByKey",
                       "Dedup/JoinSurvivor/CoGroupByKeyImpl/GroupByKey"], grouped
    assert_that(result["unique"] | beam.Map(lambda c: c.uri), equal_to(["0000.png", "other.png"]), label="Unique")
    assert_that(result[selection.REJECTED] | beam.Map(lambda r: r.reason),
                equal_to(["duplicate: same content as 0000.png"] * (copies - 1)), label="Rejected")
    pipeline.run()


# --- the student ------------------------------------------------------------------------


def _replace_image(shard, index, image_bytes):
    """Rewrites one record of a pseudo-label shard with other image bytes (labels kept)."""
    payloads = list(records.read_tfrecords(str(shard)))
    example = tf.train.Example.FromString(payloads[index])
    example.features.feature["image/encoded"].bytes_list.value[:] = [image_bytes]
    payloads[index] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for payload in payloads:
            writer.write(payload)


def _context(replicas=1):
    return tf.distribute.InputContext(num_replicas_in_sync=replicas)


@pytest.fixture(scope="module")
def student_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    folder = write_image_folder(str(root / "images"), num_classes=3, per_class=3)
    clean = write_pseudo_labels(str(root / "clean"), num_examples=10)
    broken = write_pseudo_labels(str(root / "broken"), num_examples=10)
    _replace_image(root / "broken" / "train-00000-of-00002.tfrecord", 2, TRUNCATED_PNG)
    return root, folder, clean, broken


def _builder(folder, pseudo_glob, eval_source=None):
    labeled = student_sources.open_source(folder)
    config = TrainConfig(model="resnet_rs_tiny", labeled="images", model_dir="unused", pseudo="pseudo",
                         pseudo_ratio=3, batch_size=2, num_classes=3, shuffle_buffer=4, eval_batch_size=4)
    return inputs.InputBuilder(config, labeled, pseudo.open_pseudo(pseudo_glob, 3), eval_source)


def test_an_undecodable_record_only_changes_its_own_batch_and_resumption_stays_exact(student_data, capfd):
    _, folder, clean, broken = student_data
    expected = list(_builder(folder, clean).train_dataset(_context()).take(8))
    batches = list(_builder(folder, broken).train_dataset(_context()).take(8))
    skipped_per_step = {}
    for step, (want, got) in enumerate(zip(expected, batches)):
        assert got["pseudo_images"].shape == (6, 32, 32, 3) and np.isfinite(got["pseudo_images"].numpy()).all()
        np.testing.assert_array_equal(got["labeled_images"].numpy(), want["labeled_images"].numpy())
        images, targets = got["pseudo_images"].numpy(), got["pseudo_targets"].numpy()
        differ = [i for i in range(6) if not np.array_equal(images[i], want["pseudo_images"].numpy()[i])]
        kept = [i for i in range(6) if i not in differ]
        np.testing.assert_array_equal(targets[kept], want["pseudo_targets"].numpy()[kept])
        for slot in differ:  # a copy of another example of the same batch, image and target together
            assert any(np.array_equal(images[slot], images[i]) and np.array_equal(targets[slot], targets[i])
                       for i in kept), (step, slot)
        if differ:
            skipped_per_step[step] = len(differ)
    # 8 steps x 6 pseudo images cross the 10 records 4.8 times: the bad one is met 4 or 5 times.
    total = sum(skipped_per_step.values())
    assert 4 <= total <= 5, skipped_per_step
    err = capfd.readouterr().err
    skips = [line for line in err.splitlines() if "undecodable image(s) skipped in the pseudo stream" in line]
    # Printed as batches are prepared, which prefetching may take past the 8 steps read here.
    assert len(skips) >= len(skipped_per_step), err
    assert skips[len(skipped_per_step) - 1].endswith(f"; {total} skipped in this stream since training "
                                                     "(re)started"), err

    resumed = list(_builder(folder, broken).train_dataset(_context(), start_step=5).take(3))
    for want, got in zip(batches[5:], resumed):
        for key in want:
            np.testing.assert_array_equal(want[key].numpy(), got[key].numpy())


def test_a_batch_where_nothing_decodes_still_has_its_shape():
    positions = tf.constant([10, 11, 12], tf.int64)
    targets = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    images, kept, skipped = inputs._assemble(positions, targets, tf.zeros([0], tf.int32), tf.zeros([0, 4, 4, 3]))
    assert images.shape == (3, 4, 4, 3) and not images.numpy().any()
    np.testing.assert_array_equal(kept.numpy(), targets.numpy())
    np.testing.assert_array_equal(skipped.numpy(), [10, 11, 12])
    survivors = tf.stack([tf.fill([4, 4, 3], 1.0), tf.fill([4, 4, 3], 3.0)])
    images, kept, skipped = inputs._assemble(positions, targets, tf.constant([0, 2]), survivors)
    np.testing.assert_array_equal(images.numpy()[:, 0, 0, 0], [1.0, 1.0, 3.0])
    np.testing.assert_array_equal(kept.numpy(), targets.numpy()[[0, 0, 2]])
    np.testing.assert_array_equal(skipped.numpy(), [11])


def test_undecodable_labeled_and_eval_images_are_skipped_but_a_wrong_label_still_stops(student_data, capfd):
    root, _, clean, _ = student_data
    folder = write_image_folder(str(root / "images_with_a_bad_one"), num_classes=3, per_class=3)
    with open(os.path.join(folder, "class_b", "9.png"), "wb") as handle:
        handle.write(TRUNCATED_PNG)
    builder = _builder(folder, clean, eval_source=student_sources.open_source(folder))
    for batch in builder.train_dataset(_context()).take(10):
        assert batch["labeled_images"].shape == (2, 32, 32, 3)
    batches = list(builder.eval_dataset(_context()))
    assert sum(float(b["mask"].numpy().sum()) for b in batches) == 9  # 10 images, one undecodable
    err = capfd.readouterr().err
    assert "skipped in the labeled stream" in err and "1 undecodable eval image(s) skipped" in err

    out_of_range = student_sources.open_source(  # labels 3, 4, 5 for a 3-class run
        write_labeled_tfrecords(str(root / "labels"), num_classes=3, label_offset=3), num_classes=3)
    wrong = inputs.InputBuilder(builder.config, out_of_range, None)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label outside"):
        for _ in wrong.train_dataset(_context()).take(12):
            pass


def test_training_skips_and_counts_an_undecodable_pseudo_image(student_data, tmp_path, capfd):
    _, folder, _, broken = student_data
    result = train.run(TrainConfig(**small_flags(folder, str(tmp_path / "model"), pseudo=broken, pseudo_ratio=2)))
    assert result["step"] == 4
    err = capfd.readouterr().err
    skips = [line for line in err.splitlines() if "undecodable image(s) skipped in the pseudo stream" in line]
    assert skips, err
    # 4 steps x 8 pseudo images cross the 10 records 3.2 times: the bad one is met 3 or 4 times
    # (or more in batches prefetched past the last step).
    total = int(re.search(r"; (\d+) skipped in this stream since training \(re\)started$", skips[-1]).group(1))
    assert total >= 3, skips

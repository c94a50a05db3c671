"""pipeline.label end to end on DirectRunner: real photos, bad files, accounting, reruns."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import commit, label, records
from pipeline.options import UsageError


def _label(teacher, source, output, *flags):
    # tiny_teacher is randomly initialised, which the job refuses without the flag. These tests
    # check sources and accounting, one record per input: --per_class=0 turns off the default
    # balance (tested in test_label_copies.py); a test's own --per_class comes later and wins.
    return label.run([f"--teacher={teacher}", f"--input={source}", f"--output={output}", "--num_shards=3",
                      "--max_batch_size=8", "--allow_random_teacher", "--per_class=0", *flags])


def _read_run(output):
    manifest = json.loads((output / "manifest.json").read_text())
    written = [records.parse_example(payload) for name in manifest["files"]["train"]
               for payload in records.read_tfrecords(str(output / name))]
    rejected = [json.loads(line) for name in manifest["files"]["rejected"]
                for line in (output / name).read_text().splitlines()]
    return manifest, written, rejected


def _shard_bytes(output):
    return {path.name: path.read_bytes() for path in sorted(output.glob("train-*"))}


# What the job guarantees across worker counts, processes and CPUs: the same images read,
# rejected, selected, duplicated and written to the same shards in the same order, with every
# field but the teacher's floats byte-equal; the floats equal to a tolerance. XLA:CPU alone
# changes low bits with its thread count (measured: up to 6e-7 in a probability between 1 and
# 2 intra-op threads on one AMD EPYC; TF's graph executor gave the same bits), and other CPUs
# round differently again. 1e-5 leaves a margin of ten and more over that.
PROBABILITY_TOLERANCE = 1e-5
TEACHER_FLOATS = ("label/top_k_probabilities", "label/confidence", "label/entropy", "label/distribution")


def assert_same_labeling(expected_dir, actual_dir, atol=PROBABILITY_TOLERANCE):
    expected, expected_written, expected_rejected = _read_run(expected_dir)
    actual, actual_written, actual_rejected = _read_run(actual_dir)
    assert actual["counts"] == expected["counts"]
    assert actual["files"] == expected["files"]
    assert actual["rejected_by_reason"] == expected["rejected_by_reason"]
    assert actual_rejected == expected_rejected
    per_shard = {name: len(list(records.read_tfrecords(str(actual_dir / name))))
                 for name in actual["files"]["train"]}
    assert per_shard == {name: len(list(records.read_tfrecords(str(expected_dir / name))))
                         for name in expected["files"]["train"]}
    assert len(actual_written) == len(expected_written)
    for want, got in zip(expected_written, actual_written):  # shard by shard, in file order
        assert sorted(got) == sorted(want)
        for field, value in want.items():
            if field in TEACHER_FLOATS:
                np.testing.assert_allclose(got[field], value, rtol=0, atol=atol, err_msg=field)
            else:
                np.testing.assert_array_equal(got[field], value, err_msg=field)


def assert_decisions_have_margin(everything_dir, min_confidence, per_class, atol=PROBABILITY_TOLERANCE):
    """The premise of comparing two runs to a tolerance: no decision turns on a difference
    near it. `everything_dir` holds a run that wrote every labeled image (threshold 0, no cap)."""
    _, written, _ = _read_run(everything_dir)
    by_class = {}
    for record in written:
        by_class.setdefault(int(record["label/top_k_indices"][0]), []).append(record["label/confidence"])
    for label, confidences in by_class.items():
        confidences = np.sort(confidences)[::-1]
        assert np.all(np.abs(confidences - min_confidence) > 100 * atol), f"class {label}: one sits at the threshold"
        above = confidences[confidences >= min_confidence]
        if len(above) > per_class:
            assert above[per_class - 1] - above[per_class] > 100 * atol, f"class {label}: a tie at the cap"


@pytest.fixture(scope="module")
def photo_run(photo_folder, tiny_teacher, tmp_path_factory):
    folder, good, bad = photo_folder
    output = tmp_path_factory.mktemp("labels") / "run"
    _label(tiny_teacher, f"{folder}/*", output, "--min_confidence=0.3", "--per_class=12", "--full_distribution")
    return output


def test_every_input_is_accounted_for(photo_run, photo_folder):
    folder, good, bad = photo_folder
    manifest, written, rejected = _read_run(photo_run)
    counts = manifest["counts"]
    assert counts["read"] == len(good) + len(bad)
    assert counts["rejected"] == len(bad) and counts["labeled"] == len(good)
    assert counts["labeled"] == counts["below_threshold"] + counts["over_cap"] + counts["kept"]
    assert counts["written"] == counts["kept"] + counts["duplicates"] == len(written)
    assert {r["uri"].rsplit("/", 1)[1]: r["reason"].split(":")[0] for r in rejected} == bad
    assert all(r["reason"] and r["stage"] in ("read", "decode") for r in rejected)
    assert sum(manifest["rejected_by_reason"].values()) == len(bad)
    assert not list(photo_run.glob("_staging-*")), "the staging directory is removed at commit"


def test_records_follow_the_contract(photo_run, photo_folder, tiny_teacher):
    folder, _, _ = photo_folder
    manifest, written, _ = _read_run(photo_run)
    assert manifest["schema_version"] == 1 and manifest["teacher"]["num_classes"] == 4
    assert manifest["teacher"]["teacher_id"] == json.loads(open(f"{tiny_teacher}/teacher.json").read())["teacher_id"]
    assert written, "the tiny teacher should keep some photos"
    for record in written:
        source = folder / record["image/source_uri"].rsplit("/", 1)[1]
        assert record["image/key"] == hashlib.sha256(source.read_bytes()).hexdigest()
        probabilities = record["label/top_k_probabilities"]
        assert len(probabilities) == 4 and np.all(np.diff(probabilities) <= 0)
        assert record["label/confidence"] == pytest.approx(probabilities[0]) and record["label/confidence"] >= 0.3
        assert record["label/distribution"].sum() == pytest.approx(1.0, abs=1e-5)
        assert record["label/entropy"] == pytest.approx(
            -np.sum(record["label/distribution"] * np.log(record["label/distribution"])), abs=1e-4)
        assert tf.io.decode_image(record["image/encoded"], channels=3).shape[-1] == 3
    per_class = {}
    for record in written:
        per_class[int(record["label/top_k_indices"][0])] = per_class.get(int(record["label/top_k_indices"][0]), 0) + 1
    assert all(count == 12 for count in per_class.values()), per_class  # capped, and filled by duplication


def test_stats_match_the_records(photo_run):
    manifest, written, _ = _read_run(photo_run)
    stats = json.loads((photo_run / "stats.json").read_text())
    assert stats["class_names"][2] == "<script>alert(1)</script>"
    assert sum(stats["confidence_histogram"]["counts"]) == manifest["counts"]["labeled"]
    assert sum(stats["entropy_histogram"]["counts"]) == manifest["counts"]["labeled"]
    assert len(stats["confidence_histogram"]["edges"]) == 101
    for row in stats["per_class"]:
        assert row["written"] == row["kept"] + row["duplicates"]
        assert row["labeled"] == row["above_threshold"] + (row["labeled"] - row["above_threshold"])
        if row["labeled"]:
            assert len(row["confidence_quantiles"]) == 11 and row["mean_confidence"] is not None
            examples = stats["examples"][str(row["class"])]
            assert 1 <= len(examples["most_confident"]) <= 4 and examples["most_confident"][0]["thumbnail"]
    assert sum(row["written"] for row in stats["per_class"]) == len(written)
    assert sum(row["labeled"] for row in stats["per_class"]) == manifest["counts"]["labeled"]


def test_rerun_refuses_then_replaces_with_identical_shards(photo_run, photo_folder, tiny_teacher):
    folder, _, _ = photo_folder
    before = _shard_bytes(photo_run)
    with pytest.raises(UsageError, match="already holds a labeling run; pass --overwrite"):
        _label(tiny_teacher, f"{folder}/*", photo_run, "--min_confidence=0.3", "--per_class=12",
               "--full_distribution")
    _label(tiny_teacher, f"{folder}/*", photo_run, "--min_confidence=0.3", "--per_class=12", "--full_distribution",
           "--overwrite")
    assert _shard_bytes(photo_run) == before


def test_two_worker_processes_label_like_one(photo_run, photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "everything", "--min_confidence=0", "--full_distribution")
    assert_decisions_have_margin(tmp_path / "everything", min_confidence=0.3, per_class=12)
    _label(tiny_teacher, f"{folder}/*", tmp_path / "two", "--min_confidence=0.3", "--per_class=12",
           "--full_distribution", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert_same_labeling(photo_run, tmp_path / "two")


def test_the_comparison_catches_a_different_selection(photo_run, photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "other", "--min_confidence=0.3", "--per_class=11",
           "--full_distribution")
    with pytest.raises(AssertionError):
        assert_same_labeling(photo_run, tmp_path / "other")


def test_teacher_compile_mode_is_forced_by_flag_and_reported(photo_folder, tiny_teacher, tmp_path):
    folder, good, _ = photo_folder
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{folder / name}\n" for name in good[:3]))
    modes = {}
    for mode in ("xla", "graph"):
        modes[mode] = label.teacher_compile_modes(
            _label(tiny_teacher, listing, tmp_path / mode, "--min_confidence=0", "--full_distribution",
                   f"--jit_compile={mode}"))
        assert json.loads((tmp_path / mode / "manifest.json").read_text())["settings"]["jit_compile"] == mode
    assert list(modes["xla"]) == ["xla"] and list(modes["graph"]) == ["graph"], modes
    assert_same_labeling(tmp_path / "xla", tmp_path / "graph")


def test_list_file_and_tfrecord_sources(photo_folder, tiny_teacher, tmp_path):
    folder, good, _ = photo_folder
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two photos, one twice, one missing\n{folder / good[0]}\n{folder / good[1]}\n"
                       f"{folder / good[0]}\n\n{folder / 'missing.jpg'}\n")
    _label(tiny_teacher, listing, tmp_path / "listed", "--min_confidence=0")
    manifest, written, rejected = _read_run(tmp_path / "listed")
    assert manifest["counts"]["read"] == 4 and manifest["counts"]["labeled"] == 2
    assert sorted(r["reason"].split(":")[0] for r in rejected) == ["duplicate_uri", "unreadable"]

    shard = tmp_path / "images.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for name in good[:3]:
            feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[(folder / name).read_bytes()]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        writer.write(tf.train.Example().SerializeToString())  # no image in it
    _label(tiny_teacher, shard, tmp_path / "from_records", "--min_confidence=0")
    manifest, written, rejected = _read_run(tmp_path / "from_records")
    assert manifest["counts"] == {**manifest["counts"], "read": 4, "labeled": 3, "rejected": 1}
    assert rejected[0]["uri"].endswith("images.tfrecord#3") and rejected[0]["reason"].startswith("no_image_feature")
    assert sorted(r["image/source_uri"] for r in written) == [f"{shard}#{i}" for i in range(3)]


def test_dedup_writes_identical_content_once_and_rejects_the_copies(photo_folder, tiny_teacher, tmp_path):
    folder, good, bad = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "dedup", "--min_confidence=0", "--dedup")
    manifest, written, rejected = _read_run(tmp_path / "dedup")
    # Every photo was saved as NAME.jpg and NAME_upper.JPEG with the same bytes.
    copies = sorted(name for name in good if name.endswith("_upper.JPEG"))
    duplicates = sorted(r["uri"].rsplit("/", 1)[1] for r in rejected if r["stage"] == "dedup")
    assert duplicates == copies and all("same content as" in r["reason"] for r in rejected if r["stage"] == "dedup")
    assert manifest["counts"]["labeled"] == len(good) - len(copies)
    assert manifest["counts"]["read"] == manifest["counts"]["rejected"] + manifest["counts"]["labeled"]


def test_every_stage_reports_beam_counters(photo_folder, tiny_teacher, tmp_path):
    folder, good, _ = photo_folder
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{folder / name}\n" for name in good[:4] + ["empty.jpg", "readme.txt"]))
    results = _label(tiny_teacher, listing, tmp_path / "out", "--min_confidence=0", "--per_class=1",
                     "--balance=none")
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed
                for result in results for c in result.metrics().query()["counters"]}
    assert counters[("ReadImages", "rejected")] == 1
    assert counters[("PredictShards", "shards_computed")] == 1
    assert counters[("Decode", "decoded")] == 4 and counters[("Decode", "rejected")] == 1
    assert counters[("Select", "above_threshold")] == 4
    assert counters[("Select", "kept")] + counters[("Select", "over_cap")] == 4
    assert counters[("WriteRecords", "train_written")] == counters[("Select", "kept")]
    assert counters[("Commit", "runs_committed")] == 1
    assert any(namespace == "Label" for namespace, _ in counters), "the model handler's own counters"


def test_tfds_source_with_mock_data(tiny_teacher, tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        _label(tiny_teacher, "tfds:imagenet2012/validation", tmp_path / "tfds", "--min_confidence=0",
               "--tfds_ranges=2")
    manifest, written, _ = _read_run(tmp_path / "tfds")
    assert manifest["counts"]["read"] == manifest["counts"]["labeled"] == len(written) == 6
    assert sorted(r["image/source_uri"] for r in written) == [f"tfds:imagenet2012/validation/{i}" for i in range(6)]


@pytest.mark.parametrize("flags, message", [
    (["--top_k=9"], "--top_k=9 must be between 1 and the teacher's 4 classes"),
    (["--min_confidence=1.5"], "--min_confidence=1.5 must be in"),
    (["--balance=duplicate", "--per_class=0"], "--balance=duplicate needs a --per_class above 0"),
    (["--max_batch_size=0"], "--max_batch_size=0 must be >= 1"),
    (["--num_shards=-1"], "--num_shards must be >= 0"),
    (["--no_such_flag=1"], "unknown flag --no_such_flag"),
    (["--balance=sometimes"], "--balance"),
    (["--tpu=local", "--teacher_strategy=cpu"], "--tpu=local contradicts"),
])
def test_wrong_flags_stop_the_job_before_any_work(photo_folder, tiny_teacher, tmp_path, flags, message):
    folder, _, _ = photo_folder
    with pytest.raises(UsageError) as error:
        label.run([f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={tmp_path / 'out'}", *flags])
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_input_or_teacher_is_named(photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    with pytest.raises(UsageError, match="--input=.*nothing/\\* matches no file"):
        label.run([f"--teacher={tiny_teacher}", f"--input={tmp_path}/nothing/*", f"--output={tmp_path}/o"])
    with pytest.raises(UsageError, match="--teacher=.* is not a teacher directory"):
        label.run([f"--teacher={tmp_path}", f"--input={folder}/*", f"--output={tmp_path}/o"])
    result = subprocess.run([sys.executable, "-m", "pipeline.label", f"--teacher={tiny_teacher}",
                             f"--input={folder}/*"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "pipeline.label: error: --output is required." in result.stderr


def test_accounting_that_does_not_close_fails_loudly():
    counts = {"read": 10, "rejected": 2, "labeled": 8, "below_threshold": 1, "over_cap": 2, "kept": 5,
              "duplicates": 3, "unavailable": 0, "unavailable_copies": 0, "written": 8}
    commit.check_accounting(counts, rejected_written=2)
    with pytest.raises(commit.AccountingError, match="read 11 != rejected 2 \\+ labeled 8"):
        commit.check_accounting({**counts, "read": 11}, rejected_written=2)
    with pytest.raises(commit.AccountingError, match="records written 7 != kept 5 \\+ duplicates 3"):
        commit.check_accounting({**counts, "written": 7}, rejected_written=2)

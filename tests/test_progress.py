"""Progress of the labeling job: the lines a local run prints, the counters, and that progress
never changes what the job writes."""

import json
import re
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineState

from pipeline import label, progress
from pipeline.options import UsageError

LINE = re.compile(r"^labeling: ([\d,]+) / ([\d,]+|\?) images done \((?:(\d+)%; )?([\d,]+) rejected\), "
                  r"(\S+) img/s, (ETA|took) (\S+)$")


def _lines(text):
    """(done, total or None, rejected, finished) of each progress line in `text`."""
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            number = lambda group: int(group.replace(",", ""))  # noqa: E731
            total = None if match[2] == "?" else number(match[2])
            found.append((number(match[1]), total, number(match[4]), match[6] == "took"))
    return found


def _label(teacher, source, output, *flags):
    return label.run([f"--teacher={teacher}", f"--input={source}", f"--output={output}", "--num_shards=3",
                      "--max_batch_size=8", "--allow_random_teacher", *flags])


def _counter(result, name):
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(progress.NAMESPACE).with_name(name))
    return sum(counter.committed for counter in query["counters"])


# Formatting.

def test_durations():
    assert progress.format_duration(0) == "0s"
    assert progress.format_duration(59.4) == "59s"
    assert progress.format_duration(708) == "11m48s"
    assert progress.format_duration(3599.6) == "1h00m"
    assert progress.format_duration(2 * 3600 + 5 * 60 + 59) == "2h05m"
    assert progress.format_duration(100 * 3600) == "100h00m"
    for unknown in (None, float("inf"), float("nan"), -1):
        assert progress.format_duration(unknown) == "?"


def test_rates():
    assert progress.format_rate(124.4) == "124 img/s"
    assert progress.format_rate(12_345.6) == "12,346 img/s"
    assert progress.format_rate(3.54) == "3.5 img/s"
    assert progress.format_rate(None) == "? img/s"


def test_progress_lines():
    # 12,288 done in 99.1 s: 124 img/s; the 87,712 left take 707 s more.
    assert progress.progress_line(12_288, 100_000, 287, 12_288 / 124) == \
        "labeling: 12,288 / 100,000 images done (12%; 287 rejected), 124 img/s, ETA 11m47s"
    assert progress.progress_line(99_999, 100_000, 0, 1000).startswith(
        "labeling: 99,999 / 100,000 images done (99%; "), "100% only once every image is done"
    assert progress.progress_line(500, None, 3, 100) == \
        "labeling: 500 / ? images done (3 rejected), 5.0 img/s, ETA ?"
    assert progress.progress_line(5, 10, 0, 0.5) == \
        "labeling: 5 / 10 images done (50%; 0 rejected), ? img/s, ETA ?", "no rate from under a second"
    assert progress.progress_line(10, 10, 1, 60, finished=True) == \
        "labeling: 10 / 10 images done (100%; 1 rejected), 0.2 img/s, took 1m00s"


def test_the_board_sums_every_tally_and_prints_one_line_per_interval(capsys):
    board = progress.Board.create()
    try:
        now = time.time()
        board.publish("worker1", {"labeled": 30, "rejected": 2, "first": now - 20, "last": now - 1})
        board.publish("worker2", {"labeled": 8, "rejected": 0, "first": now - 10, "last": now})
        board.report_if_due(every_s=3600, total=100)  # the board's first line is due an interval after it began
        assert capsys.readouterr().err == ""
        board.report_if_due(every_s=0, total=100)
        board.report_if_due(every_s=3600, total=100)  # the line printed just now is not an hour old
        (line,) = capsys.readouterr().err.splitlines()
        assert _lines(line) == [(40, 100, 2, False)]
        assert line.endswith(", 2.0 img/s, ETA 30s"), "40 done since the first tally began, 20 s ago"
    finally:
        board.remove()


# Why progress is printed from inside the pipeline (pipeline/progress.py): polling the result
# of a local run while it works is not possible, since FnApiRunner returns only once it is done.

def test_fnapirunner_returns_only_once_the_pipeline_is_done():
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = pipeline | beam.Create(range(4)) | beam.Map(lambda _: time.sleep(0.25))
    started = time.monotonic()
    result = pipeline.run()
    assert result.state == PipelineState.DONE and time.monotonic() - started >= 1.0


def test_unknown_total_is_a_question_mark(capfd):
    """Inputs counted only once read (TFRecord, TFDS): "?" rather than a guess."""
    pipeline = beam.Pipeline(runner=FnApiRunner())
    items = pipeline | beam.Create(range(30)) | beam.Reshuffle() | beam.Map(lambda x: time.sleep(0.01) or x)
    done = items | beam.Map(lambda x: ("labeled" if x % 10 else "rejected", 1))
    committed = (done | "CountAll" >> beam.combiners.Count.Globally())
    progress.track(0.05, pipeline.runner, (), done, committed)
    result = pipeline.run()
    lines = _lines(capfd.readouterr().err)
    assert len(lines) >= 2 and all(total is None for _, total, _, _ in lines)
    assert lines[-1] == (30, None, 3, True)
    assert _counter(result, "processed") == 30 and _counter(result, "found") == 0


def test_a_lost_board_never_fails_the_job(tmp_path, monkeypatch, capfd):
    import shutil

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def lose_the_board(x):  # what a /tmp cleaner could do in the middle of a long run
        if x == 10:
            for board in tmp_path.glob("label-progress-*"):
                shutil.rmtree(board)
        return x

    pipeline = beam.Pipeline(runner=FnApiRunner())
    labeled = pipeline | beam.Create(range(20)) | beam.Reshuffle() | beam.Map(lose_the_board)
    progress.track(0.001, pipeline.runner, (labeled,), labeled | beam.Map(lambda _: ("labeled", 1)), labeled)
    assert pipeline.run().state == PipelineState.DONE
    assert "no more progress lines from this worker (FileNotFoundError" in capfd.readouterr().err


def test_remote_runners_say_where_progress_is(capfd, tmp_path, monkeypatch):
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where a board would be made
    pipeline = beam.Pipeline(runner=DataflowRunner(), options=PipelineOptions(
        ["--project=example-project", "--region=us-central1", "--temp_location=gs://example-bucket/tmp",
         "--no_auth", "--dry_run=True"]))
    items = pipeline | beam.Create([1, 2])
    progress.track(10, pipeline.runner, (items,), items | beam.Map(lambda _: ("labeled", 1)), items)
    (line,) = capfd.readouterr().err.splitlines()
    assert "Progress/processed" in line and "gcloud dataflow metrics list JOB_ID" in line
    assert not list(tmp_path.glob("label-progress-*")), "no board: a remote runner's workers share no disk"


def test_a_negative_interval_is_refused(photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    with pytest.raises(UsageError, match="--progress_every_s"):
        _label(tiny_teacher, f"{folder}/*", tmp_path / "out", "--progress_every_s=-1")


# The labeling job.

def _check_run(output, err, results, total_known=True):
    """The progress lines of a run against its prediction index (progress is stage 1's, the
    teacher's pass; rejections made by selection, e.g. --dedup's, come after); returns them."""
    counts = json.loads((output / "predictions" / "index.json").read_text())["counts"]
    result = results.predict
    total = counts["read"] if total_known else None
    lines = _lines(err)
    assert len(lines) >= 3, err
    assert all(shown == total for _, shown, _, _ in lines), "the total is what the match step found, or ?"
    assert [done for done, *_ in lines] == sorted(done for done, *_ in lines)
    assert lines[-1] == (counts["read"], total, counts["rejected"], True), "every image read is done"
    assert [finished for *_, finished in lines].count(True) == 1
    assert _counter(result, "processed") == counts["read"]
    assert _counter(result, "found") == (counts["read"] if total_known else 0)
    return lines


def test_a_local_run_prints_its_progress(photo_folder, tiny_teacher, tmp_path, capfd):
    folder, good, bad = photo_folder
    result = _label(tiny_teacher, f"{folder}/*", tmp_path / "out", "--progress_every_s=0.001", "--dedup")
    lines = _check_run(tmp_path / "out", capfd.readouterr().err, result)
    assert lines[-1][0] == len(good) + len(bad)
    assert any(0 < done < len(good) + len(bad) for done, *_ in lines), "lines while the images are labeled"


def test_a_multi_process_run_prints_one_sum(photo_folder, tiny_teacher, tmp_path, capfd):
    """Two worker processes: one series of lines, the sum of both (not each its own share)."""
    folder, good, bad = photo_folder
    result = _label(tiny_teacher, f"{folder}/*", tmp_path / "out", "--progress_every_s=0.001",
                    "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    _check_run(tmp_path / "out", capfd.readouterr().err, result)


def test_progress_changes_no_output(photo_folder, tiny_teacher, tmp_path, capfd):
    folder, _, _ = photo_folder
    printed = {}
    for name, every in (("quiet", "0"), ("chatty", "0.001")):
        # One --output for both: the run id, in the manifest, is a hash of every setting, --output included.
        _label(tiny_teacher, f"{folder}/*", tmp_path / "run", f"--progress_every_s={every}", "--per_class=12")
        (tmp_path / "run").rename(tmp_path / name)
        printed[name] = _lines(capfd.readouterr().err)
    assert printed["quiet"] == [] and len(printed["chatty"]) >= 3

    def files(output):
        found = {path.relative_to(output).as_posix(): path.read_bytes() for path in output.rglob("*")
                 if path.is_file()}
        manifest = json.loads(found.pop("manifest.json"))
        manifest.pop("run_nonce")  # drawn anew by every run, whatever its flags
        return found, manifest

    chatty = files(tmp_path / "chatty")
    assert files(tmp_path / "quiet") == chatty
    assert chatty[1]["settings"].get("progress_every_s") is None, "not a labeling setting"


def test_list_files_count_what_they_list_and_tfrecords_say_question_mark(photo_folder, tiny_teacher, tmp_path,
                                                                        capfd):
    import tensorflow as tf

    folder, good, _ = photo_folder
    listing = tmp_path / "inputs.txt"  # a repeat and a missing file are rejections; a glob is its matches
    listing.write_text(f"{folder / good[0]}\n{folder / good[0]}\n{folder}/*.png\n{folder / 'missing.jpg'}\n")
    result = _label(tiny_teacher, str(listing), tmp_path / "listed", "--progress_every_s=0.001")
    _check_run(tmp_path / "listed", capfd.readouterr().err, result)

    records_path = tmp_path / "photos.tfrecord"
    with tf.io.TFRecordWriter(str(records_path)) as writer:
        for name in good[:6]:
            feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[(folder / name).read_bytes()]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    # Progress moves by teacher batch: batches of 2 give the 6 records several lines.
    result = _label(tiny_teacher, str(records_path), tmp_path / "records", "--progress_every_s=0.001",
                    "--max_batch_size=2")
    _check_run(tmp_path / "records", capfd.readouterr().err, result, total_known=False)

"""The labeling job's two stages: the prediction index, re-selection without the teacher,
resumption after a kill, and inputs that change between the stages."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import index, label, select
from pipeline.elements import Prediction, Rejection
from pipeline.options import UsageError
from test_label import _read_run, assert_same_labeling


def _label(teacher, source, output, *flags):
    return label.run([f"--teacher={teacher}", f"--input={source}", f"--output={output}", "--max_batch_size=8",
                      "--allow_random_teacher", *flags])


def _select(predictions, output, *flags):
    return select.run([f"--predictions={predictions}", f"--output={output}", *flags])


def _files(directory, pattern):
    return {path.name: path.read_bytes() for path in sorted(directory.glob(pattern))}


def _counters(result):
    return {(c.key.metric.namespace, c.key.metric.name): c.committed for c in result.metrics().query()["counters"]}


def test_label_then_select_writes_the_bytes_of_one_labeling_command(photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    chosen = ["--min_confidence=0.3", "--per_class=5", "--num_shards=3", "--dedup"]
    _label(tiny_teacher, f"{folder}/*", tmp_path / "one", f"--predictions={tmp_path / 'p1'}", *chosen)
    _label(tiny_teacher, f"{folder}/*", tmp_path / "first", f"--predictions={tmp_path / 'p2'}", "--min_confidence=0")
    _select(tmp_path / "p2", tmp_path / "again", *chosen)

    assert _files(tmp_path / "p1", "predictions-*") == _files(tmp_path / "p2", "predictions-*")
    for pattern in ("train-*", "rejected-*", "stats.json"):
        assert _files(tmp_path / "again", pattern) == _files(tmp_path / "one", pattern), pattern
    one, again = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "again"))
    assert again["predictions"] == {**one["predictions"], "path": str(tmp_path / "p2")}
    for manifest in (one, again):
        manifest.pop("run_nonce"), manifest.pop("predictions")
    assert again == one
    # The first selection differs (no threshold), so the comparison has something to catch.
    assert _files(tmp_path / "first", "train-*") != _files(tmp_path / "one", "train-*")


def test_the_index_holds_labels_and_uris_but_no_image_bytes(photo_folder, tiny_teacher, tmp_path):
    folder, good, bad = photo_folder
    _label(tiny_teacher, f"{folder}/*", tmp_path / "out", "--min_confidence=0")
    document = index.read_index(str(tmp_path / "out" / "predictions"))
    entries = [entry for shard in document["shards"]
               for entry in index.read_shard(str(tmp_path / "out" / "predictions" / shard["name"]))]
    predictions = [entry for entry in entries if isinstance(entry, Prediction)]
    assert document["counts"] == {"read": len(entries), "labeled": len(predictions),
                                  "rejected": len(entries) - len(predictions)}
    assert len(predictions) == len(good) and len(entries) == len(good) + len(bad)
    assert all(isinstance(entry, Rejection) for entry in entries if os.path.basename(entry.uri) in bad)
    index_bytes = sum(len(data) for data in _files(tmp_path / "out" / "predictions", "predictions-*.tfrecord").values())
    image_bytes = sum((folder / name).stat().st_size for name in good)
    assert index_bytes < 400 * len(entries) < image_bytes, (index_bytes, image_bytes)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["predictions"]["run_id"] == document["run_id"]
    assert manifest["teacher"] == document["teacher"]


def test_select_refuses_a_directory_without_an_index_and_wrong_flags(tmp_path):
    with pytest.raises(UsageError, match="holds no prediction index"):
        _select(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(UsageError, match="unknown flag --temperature"):
        _select(tmp_path / "nothing", tmp_path / "out", "--temperature=2")
    result = subprocess.run([sys.executable, "-m", "pipeline.select", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--min_confidence" in result.stdout and "--teacher" not in result.stdout


def test_a_changed_prediction_setting_needs_overwrite_and_replaces_the_index(photo_folder, tiny_teacher, tmp_path):
    folder, _, _ = photo_folder
    predictions = tmp_path / "p"
    _label(tiny_teacher, f"{folder}/*", tmp_path / "a", f"--predictions={predictions}")
    before = set(_files(predictions, "predictions-*"))
    with pytest.raises(UsageError, match="holds the prediction index of another teacher or prediction settings"):
        _label(tiny_teacher, f"{folder}/*", tmp_path / "b", f"--predictions={predictions}", "--temperature=2")
    _label(tiny_teacher, f"{folder}/*", tmp_path / "b", f"--predictions={predictions}", "--temperature=2",
           "--overwrite")
    after = set(_files(predictions, "predictions-*"))
    assert after and not after & before, "the old index's shards are removed, none is reused"
    assert index.read_index(str(predictions))["settings"]["temperature"] == 2


def test_an_input_gone_before_selection_is_counted_unavailable(photo_folder, tiny_teacher, tmp_path):
    folder, good, _ = photo_folder
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in good:
        (copy / name).write_bytes((folder / name).read_bytes())
    # --per_class=0: every image is kept, so both changed ones are fetched (a class cap could drop them).
    _label(tiny_teacher, f"{copy}/*", tmp_path / "first", "--min_confidence=0", "--per_class=0")
    (copy / good[0]).unlink()
    (copy / good[1]).write_bytes((folder / good[2]).read_bytes())  # other content under the same name
    _select(tmp_path / "first" / "predictions", tmp_path / "second", "--min_confidence=0", "--per_class=0")
    manifest, written, rejected = _read_run(tmp_path / "second")
    counts = manifest["counts"]
    assert counts["unavailable"] == 2 and counts["kept"] == len(good) - 2 == len(written)
    assert counts["labeled"] == counts["kept"] + counts["unavailable"] + counts["below_threshold"]
    reasons = {os.path.basename(line["uri"]): line["reason"] for line in rejected if line["stage"] == "fetch"}
    assert reasons[good[0]].startswith("unavailable: missing") or "No such file" in reasons[good[0]], reasons
    assert reasons[good[1]].startswith("unavailable: changed: "), reasons


def _write_pngs(folder, count):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def test_a_killed_prediction_run_resumes_from_its_published_shards(tiny_teacher, tmp_path):
    images = tmp_path / "images"
    _write_pngs(images, 240)
    flags = ["--images_per_prediction_shard=4", "--min_confidence=0", "--num_shards=2", "--progress_every_s=0"]
    _label(tiny_teacher, f"{images}/*", tmp_path / "whole", *flags)
    predictions = tmp_path / "killed" / "predictions"
    command = [sys.executable, "-m", "pipeline.label", f"--teacher={tiny_teacher}", f"--input={images}/*",
               f"--output={tmp_path / 'killed'}", "--max_batch_size=8", "--allow_random_teacher", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(list(predictions.glob("predictions-*.tfrecord"))) < 5 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    published = {path.name: path.stat().st_mtime_ns for path in predictions.glob("predictions-*.tfrecord")}
    assert len(published) >= 5 and not (predictions / "index.json").exists(), "killed before stage 1 ended"

    results = _label(tiny_teacher, f"{images}/*", tmp_path / "killed", *flags)
    counters = _counters(results.predict)
    total = len(index.read_index(str(predictions))["shards"])  # buckets no unit hashed to have no shard
    assert counters[("PredictShards", "shards_resumed")] == len(published)
    assert counters[("PredictShards", "shards_computed")] == total - len(published)
    assert {name: (predictions / name).stat().st_mtime_ns for name in published} == published, "not rewritten"
    assert not list(predictions.glob("_tmp-*"))
    assert _files(predictions, "predictions-*") == _files(tmp_path / "whole" / "predictions", "predictions-*")
    assert_same_labeling(tmp_path / "whole", tmp_path / "killed")

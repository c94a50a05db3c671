"""The prediction index grows: a rerun predicts only the units it does not hold, whatever
else changed that decides no prediction; an unchanged list reads nothing; one stage-1 job
at a time; the same command twice writes the same bytes."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import index, label
from pipeline.options import UsageError
from test_label import _read_run


def _label(teacher, source, output, *flags):
    return label.run([f"--teacher={teacher}", f"--input={source}", f"--output={output}", "--max_batch_size=8",
                      "--allow_random_teacher", "--min_confidence=0", "--per_class=0",  # one record per input
                      "--overwrite", "--progress_every_s=0", *flags])


def _counter(result, namespace, name):
    return sum(c.committed for c in result.predict.metrics().query()["counters"]
               if (c.key.metric.namespace, c.key.metric.name) == (namespace, name))


def _predicted(result):
    return _counter(result, "Label", "images_predicted")


def _write_pngs(folder, start, count):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _list_file(path, uris):
    path.write_text("".join(f"{uri}\n" for uri in uris))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_pngs(tmp_path_factory.mktemp("growth") / "images", 0, 202)


def test_a_grown_list_predicts_only_its_new_images_and_a_shrunk_one_drops_them(images, tiny_teacher, tmp_path):
    predictions = tmp_path / "predictions"
    flags = [f"--predictions={predictions}", "--images_per_prediction_shard=25"]
    first = _label(tiny_teacher, _list_file(tmp_path / "a.txt", images[:200]), tmp_path / "a", *flags)
    assert _predicted(first) == 200
    grown = _label(tiny_teacher, _list_file(tmp_path / "b.txt", images), tmp_path / "b", *flags)
    assert _predicted(grown) == 2, "1% more images: 1% predicted"
    document = index.read_index(str(predictions))
    assert [(run["run"], run["new_units"]) for run in document["runs"]] == [(1, 200), (2, 2)]
    assert sorted({shard["run"] for shard in document["shards"]}) == [1, 2]
    assert document["counts"]["read"] == 202 == _read_run(tmp_path / "b")[0]["counts"]["read"]

    shrunk = _label(tiny_teacher, _list_file(tmp_path / "c.txt", images[10:]), tmp_path / "c", *flags)
    assert _predicted(shrunk) == 0
    manifest, written, _ = _read_run(tmp_path / "c")
    assert manifest["counts"]["read"] == 192 == len(written)
    assert not {record["image/source_uri"] for record in written} & set(images[:10])
    assert index.read_index(str(predictions))["counts"]["read"] == 192
    again = _label(tiny_teacher, _list_file(tmp_path / "d.txt", images), tmp_path / "d", *flags)
    assert _predicted(again) == 0, "an image back in the list keeps its label"
    assert _read_run(tmp_path / "d")[0]["counts"] == _read_run(tmp_path / "b")[0]["counts"]


def test_moving_the_list_or_changing_the_batch_predicts_nothing_and_reads_no_image(images, tiny_teacher, tmp_path):
    predictions = tmp_path / "predictions"
    flags = [f"--predictions={predictions}", "--images_per_prediction_shard=25"]
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in images[:60]:
        shutil.copy(path, copies)
    uris = sorted(str(path) for path in copies.iterdir())
    _label(tiny_teacher, _list_file(tmp_path / "list.txt", uris), tmp_path / "a", *flags)
    before = json.loads((predictions / "index.json").read_text())

    (tmp_path / "elsewhere").mkdir()
    moved = _list_file(tmp_path / "elsewhere" / "renamed.txt", uris)
    # Listed files are not statted, so stage 1 over an unchanged list cannot tell they are gone:
    # it reads none of them (stage 2 then finds them unavailable).
    copies.rename(tmp_path / "away")
    try:
        result = _label(tiny_teacher, moved, tmp_path / "b", "--max_batch_size=16", "--decode_memory_mb=512",
                        "--read_threads=4", *flags)
    finally:
        (tmp_path / "away").rename(copies)
    assert _predicted(result) == 0
    assert _counter(result, "PredictShards", "unit_lists_read") == 0
    assert _counter(result, "PredictShards", "buckets_unchanged") == before["num_buckets"]
    after = json.loads((predictions / "index.json").read_text())
    assert after["run_id"] == before["run_id"] and after["shards"] == before["shards"]
    assert after["runs"][-1]["settings"]["max_batch_size"] == 16 and after["runs"][-1]["settings"]["input"] == str(moved)

    with pytest.raises(UsageError, match="holds the prediction index of another teacher or prediction settings"):
        _label(tiny_teacher, moved, tmp_path / "c", "--jit_compile=xla", *flags[:1] + ["--nooverwrite"])


def test_the_bucket_count_doubles_when_outgrown_and_keeps_every_label(images, tiny_teacher, tmp_path):
    predictions = tmp_path / "predictions"
    flags = [f"--predictions={predictions}", "--images_per_prediction_shard=4"]
    _label(tiny_teacher, _list_file(tmp_path / "a.txt", images[:8]), tmp_path / "a", *flags)
    assert index.read_index(str(predictions))["num_buckets"] == 2
    result = _label(tiny_teacher, _list_file(tmp_path / "b.txt", images[:40]), tmp_path / "b", *flags)
    assert _predicted(result) == 32
    document = index.read_index(str(predictions))
    assert document["num_buckets"] == 16 and document["counts"]["read"] == 40
    assert {shard["of"] for shard in document["shards"]} == {2, 16}
    manifest, written, _ = _read_run(tmp_path / "b")
    assert sorted(record["image/source_uri"] for record in written) == sorted(images[:40])
    # The same list from scratch labels the same images alike.
    _label(tiny_teacher, _list_file(tmp_path / "c.txt", images[:40]), tmp_path / "c",
           f"--predictions={tmp_path / 'fresh'}", "--images_per_prediction_shard=4")
    fresh = {r["image/key"]: list(r["label/top_k_indices"]) for r in _read_run(tmp_path / "c")[1]}
    assert {r["image/key"]: list(r["label/top_k_indices"]) for r in written} == fresh


def test_the_same_command_twice_writes_the_same_bytes(images, tiny_teacher, tmp_path):
    """Default flags (--jit_compile=auto resolves to one mode by rule, not by timing)."""
    folder = os.path.dirname(images[0])
    outputs = [tmp_path / "one", tmp_path / "two"]
    for output in outputs:
        label.run([f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={output}", "--allow_random_teacher",
                   "--per_class=30", "--progress_every_s=0"])
    for pattern in ("train-*", "rejected-*", "stats.json", "predictions/predictions-*"):
        files = [{path.relative_to(output): path.read_bytes() for path in sorted(output.glob(pattern))}
                 for output in outputs]
        assert files[0] and files[0] == files[1], pattern
    settings = index.read_index(str(outputs[0] / "predictions"))["settings"]
    assert settings["jit_compile"] == "graph"


def _claim_file(directory, pid, host=None):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{index.CLAIM_PREFIX}other.json"
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "local": True}))
    return path


def test_a_second_stage_1_job_fails_before_deleting_anything(images, tiny_teacher, tmp_path):
    predictions = tmp_path / "predictions"
    flags = [f"--predictions={predictions}", "--images_per_prediction_shard=25"]
    _label(tiny_teacher, _list_file(tmp_path / "a.txt", images[:50]), tmp_path / "a", *flags)
    files = {path.name: path.read_bytes() for path in predictions.iterdir()}
    claim = _claim_file(predictions, os.getpid())  # a live job
    with pytest.raises(UsageError, match="another stage-1 job"):
        _label(tiny_teacher, _list_file(tmp_path / "b.txt", images[50:]), tmp_path / "b", "--temperature=3", *flags)
    assert {path.name: path.read_bytes() for path in predictions.iterdir() if path != claim} == files
    # A claim of a local run that was killed (its process is gone) does not block.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "local": True}))
    _label(tiny_teacher, _list_file(tmp_path / "c.txt", images[:60]), tmp_path / "c", *flags)
    assert not list(predictions.glob(f"{index.CLAIM_PREFIX}*"))


def test_two_stage_1_jobs_at_once_on_one_directory(images, tiny_teacher, tmp_path):
    predictions = tmp_path / "predictions"
    commands = [[sys.executable, "-m", "pipeline.label", f"--teacher={tiny_teacher}",
                 f"--input={_list_file(tmp_path / f'{name}.txt', uris)}", f"--output={tmp_path / name}",
                 f"--predictions={predictions}", "--allow_random_teacher", "--max_batch_size=8",
                 "--stand_in_device_ms=150", "--progress_every_s=0"]
                for name, uris in (("a", images[:120]), ("b", images[60:180]))]
    first = subprocess.Popen(commands[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    second = subprocess.Popen(commands[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = [(process.wait(timeout=600), process.stderr.read()) for process in (first, second)]
    failed = [err for code, err in outcomes if code]
    assert len(failed) <= 1 and all("another stage-1 job" in err for err in failed), outcomes
    assert len(failed) == 1, "the second job started while the first predicted (150 ms per batch)"
    document = index.read_index(str(predictions))
    assert document["counts"]["read"] == 120 and len(document["runs"]) == 1
    assert not list(predictions.glob(f"{index.CLAIM_PREFIX}*")) and not list(predictions.glob("_tmp-*"))

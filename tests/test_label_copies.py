"""Stage 2 end to end on duplicated classes: each unique image fetched once whatever its copy
count, train shards placed and ordered by content (the same images under another directory
give the same shards), dedup run once, and rejection shards sized from the index's counts."""

import json
import shutil

import pytest

from pipeline import label, records, select, write

# The tiny teacher puts every photo in one class (36 of them): 100 per class fills it with 2 or 3
# copies of each.
FLAGS = ["--min_confidence=0.3", "--per_class=100", "--num_shards=3"]


def _label(teacher, folder, output, *flags):
    return label.run([f"--teacher={teacher}", f"--input={folder}/*", f"--output={output}", "--max_batch_size=8",
                      "--allow_random_teacher", "--progress_every_s=0", *flags])


def _counters(result):
    return {(c.key.metric.namespace, c.key.metric.name): c.committed for c in result.metrics().query()["counters"]}


def _copy_images(source, destination, names):
    destination.mkdir(parents=True)
    for name in names:
        shutil.copyfile(source / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def two_directories(photo_folder, tiny_teacher, tmp_path_factory):
    """The good photos copied under two directories, each labeled with the same flags (classes
    filled by duplication), and stage 2's results of the first."""
    folder, good, _ = photo_folder
    root = tmp_path_factory.mktemp("copies")
    results = []
    for name in ("first", "elsewhere/second"):
        images = _copy_images(folder, root / name / "images", good)
        results.append(_label(tiny_teacher, images, root / name / "out", *FLAGS))
    return root / "first" / "out", root / "elsewhere" / "second" / "out", results[0]


def _train_records(output):
    manifest = json.loads((output / "manifest.json").read_text())
    return manifest, {name: [records.parse_example(payload) for payload in records.read_tfrecords(str(output / name))]
                      for name in manifest["files"]["train"]}


def test_each_unique_image_is_fetched_once_whatever_its_copies(two_directories):
    output, _, result = two_directories
    manifest, shards = _train_records(output)
    counts, counters = manifest["counts"], _counters(result.select)
    assert counts["duplicates"] > counts["kept"] > 0, "the premise: classes filled by duplication"
    assert counters[("WriteRecords", "images_fetched")] == counts["kept"]
    assert counters[("WriteRecords", "train_written")] == counts["written"] == counts["kept"] + counts["duplicates"]
    assert sum(len(shard) for shard in shards.values()) == counts["written"]
    copies = {}
    for shard in shards.values():
        for record in shard:
            copies.setdefault(record["image/source_uri"], []).append(record["label/copy_index"])
    assert len(copies) == counts["kept"] and all(sorted(c) == list(range(len(c))) for c in copies.values())


def test_the_same_images_under_another_directory_give_the_same_train_shards_but_for_source_uri(two_directories):
    first, second, _ = two_directories
    (manifest_a, shards_a), (manifest_b, shards_b) = _train_records(first), _train_records(second)
    assert manifest_a["counts"] == manifest_b["counts"]
    assert list(shards_a) == list(shards_b)
    for name in shards_a:
        uris_a = [record.pop("image/source_uri") for record in shards_a[name]]
        uris_b = [record.pop("image/source_uri") for record in shards_b[name]]
        assert [uri.rsplit("/", 1)[1] for uri in uris_a] == [uri.rsplit("/", 1)[1] for uri in uris_b], name
        assert len(shards_a[name]) == len(shards_b[name]), name
        for record_a, record_b in zip(shards_a[name], shards_b[name]):  # exact: the same bits, in the same order
            assert sorted(record_a) == sorted(record_b)
            for field, value in record_a.items():
                assert (record_b[field] == value).all() if hasattr(value, "all") else record_b[field] == value, (
                    name, field)


def test_rejection_shards_follow_the_volume_and_dedup_runs_once(photo_folder, tiny_teacher, tmp_path, monkeypatch):
    folder, good, bad = photo_folder
    # A small shard size stands in for a million lines: --dedup expects the index's rejections
    # plus every labeled entry (each may be a duplicate).
    monkeypatch.setattr(write, "REJECTION_LINES_PER_SHARD", 8)
    results = _label(tiny_teacher, folder, tmp_path / "out", "--min_confidence=0", "--dedup")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    expected = -(-(len(bad) + len(good)) // 8)
    assert len(manifest["files"]["rejected"]) == expected > 1
    assert sorted(path.name for path in (tmp_path / "out").glob("rejected-*")) == manifest["files"]["rejected"]
    assert all(name.endswith(f"-of-{expected:05d}.jsonl") for name in manifest["files"]["rejected"])
    duplicates = manifest["rejected_by_reason"]["duplicate"]
    assert duplicates == sum(name.endswith("_upper.JPEG") for name in good)
    # Dedup ran once in the job: a second run (the shard-count pass) would count every duplicate twice.
    assert _counters(results.select)[("Deduplicate", "duplicates")] == duplicates


def test_balance_is_the_default_with_per_class_derived_from_the_index(two_directories, tmp_path):
    """No --per_class: every class with a kept image is filled to (index entries // classes),
    and the manifest records the count it used; --per_class=0 turns cap and balance off."""
    first, _, _ = two_directories
    select.run([f"--predictions={first / 'predictions'}", f"--output={tmp_path / 'derived'}", "--min_confidence=0"])
    manifest, shards = _train_records(tmp_path / "derived")
    labeled, classes = manifest["counts"]["labeled"], manifest["teacher"]["num_classes"]
    per_class = manifest["settings"]["per_class"]
    assert per_class == max(1, labeled // classes) and manifest["settings"]["balance"] == "duplicate"
    by_class = {}
    for record in (record for shard in shards.values() for record in shard):
        label_index = int(record["label/top_k_indices"][0])
        by_class[label_index] = by_class.get(label_index, 0) + 1
    assert by_class and all(count == per_class for count in by_class.values()), by_class
    select.run([f"--predictions={first / 'predictions'}", f"--output={tmp_path / 'off'}", "--min_confidence=0",
                "--per_class=0"])
    manifest, _ = _train_records(tmp_path / "off")
    counts = manifest["counts"]
    assert manifest["settings"]["balance"] == "none" and counts["duplicates"] == counts["over_cap"] == 0
    assert counts["written"] == counts["kept"] == labeled

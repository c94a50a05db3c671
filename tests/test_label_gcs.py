"""pipeline.label reading and writing gs:// through a GCS emulator server on loopback.

Beam's gs:// filesystem and google-cloud-storage honour STORAGE_EMULATOR_HOST, so the job's
own reads, shard writes, renames and manifest commit all go through the emulator's HTTP API.
(The teacher stays local: TensorFlow's gs:// cannot be pointed at an emulator.)
"""

import json

from pipeline import buckets, label, records, select

BUCKET = "labeling-test"  # the bucket conftest's gcs_emulator creates


def test_gs_input_and_output(gcs_emulator, photo_folder, tiny_teacher):
    from google.cloud import storage

    folder, good, bad = photo_folder
    bucket = storage.Client().bucket(BUCKET)
    for name in good[:6] + ["empty.jpg", "text_named.jpg"]:
        bucket.blob(f"unlabeled/{name}").upload_from_filename(str(folder / name))
    label.run([f"--teacher={tiny_teacher}", f"--input=gs://{BUCKET}/unlabeled/*", f"--output=gs://{BUCKET}/labels",
               "--min_confidence=0", "--per_class=0",  # every good image written once, no balance copies
               "--num_shards=2", "--no_auth", "--allow_random_teacher"])

    names = sorted(blob.name for blob in bucket.list_blobs(prefix="labels/"))
    index_document = json.loads(bucket.blob("labels/predictions/index.json").download_as_bytes())
    assert names == ["labels/manifest.json", "labels/predictions/index.json",
                     *sorted(f"labels/predictions/{name}" for shard in index_document["shards"]
                             for name in (shard["name"], buckets.units_name(shard["name"]))),
                     "labels/rejected-00000-of-00001.jsonl", "labels/stats.json",
                     "labels/train-00000-of-00002.tfrecord", "labels/train-00001-of-00002.tfrecord"]
    assert index_document["counts"] == {"read": 8, "labeled": 6, "rejected": 2}
    manifest = json.loads(bucket.blob("labels/manifest.json").download_as_bytes())
    assert manifest["counts"]["read"] == 8 and manifest["counts"]["rejected"] == 2
    assert manifest["counts"]["written"] == manifest["counts"]["kept"] == 6
    written = [records.parse_example(payload) for shard in manifest["files"]["train"]
               for payload in records.read_tfrecords(f"gs://{BUCKET}/labels/{shard}")]
    assert sorted(r["image/source_uri"] for r in written) == sorted(f"gs://{BUCKET}/unlabeled/{n}" for n in good[:6])
    rejected = bucket.blob("labels/rejected-00000-of-00001.jsonl").download_as_text().splitlines()
    assert sorted(json.loads(line)["uri"].rsplit("/", 1)[1] for line in rejected) == ["empty.jpg", "text_named.jpg"]

    # Stage 2 alone, from the index on gs://, into another gs:// OUT_DIR: the same records.
    select.run([f"--predictions=gs://{BUCKET}/labels/predictions", f"--output=gs://{BUCKET}/again",
                "--min_confidence=0", "--per_class=0", "--num_shards=2", "--no_auth"])
    for name in manifest["files"]["train"] + manifest["files"]["rejected"] + ["stats.json"]:
        assert bucket.blob(f"again/{name}").download_as_bytes() == bucket.blob(f"labels/{name}").download_as_bytes()

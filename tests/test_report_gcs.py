"""pipeline.report on gs://: reads the run, writes the report, and recomputes stats through a GCS
emulator server on loopback (Beam's gs:// filesystem honours STORAGE_EMULATOR_HOST)."""

import json

import pytest

from pipeline.report import cli as report
from test_report import write_synthetic_run
from test_report_recompute import write_records

BUCKET = "report-test"  # the bucket conftest's gcs_emulator creates


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    from google.cloud import storage

    return storage.Client.create_anonymous_client().bucket(gcs_emulator.bucket)


def upload(bucket, folder, prefix):
    for path in sorted(folder.iterdir()):
        bucket.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


def test_report_reads_and_writes_gs(bucket, tmp_path):
    write_synthetic_run(tmp_path / "labels")
    upload(bucket, tmp_path / "labels", "synthetic")
    summary, _ = report.build_report(f"gs://{BUCKET}/synthetic", f"gs://{BUCKET}/synthetic/report.html")
    assert summary["counts"]["read"] == 1220
    page = bucket.blob("synthetic/report.html").download_as_text()
    assert page.startswith("<!DOCTYPE html>") and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_recompute_on_gs(bucket, tmp_path):
    write_records(tmp_path / "records")
    upload(bucket, tmp_path / "records", "records")
    summary, _ = report.build_report(f"gs://{BUCKET}/records", output_format="json", recompute=True,
                                     num_classes=3, beam_args=["--runner=DirectRunner", "--no_auth"])
    assert summary["counts"]["written"] == 11
    stats = json.loads(bucket.blob("records/stats.json").download_as_bytes())
    assert [row["kept"] for row in stats["per_class"]] == [6, 2, 0]

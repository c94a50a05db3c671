"""pipeline.report on gs://: reads the run, writes the report, and recomputes stats through a GCS
emulator server on loopback (Beam's gs:// filesystem honours STORAGE_EMULATOR_HOST)."""

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pipeline.report import cli as report
from test_report import write_synthetic_run
from test_report_recompute import write_records

BUCKET = "report-test"


@pytest.fixture(scope="module")
def bucket():
    executable = shutil.which("gcp-storage-emulator")
    command = [executable] if executable else [sys.executable, "-m", "gcp_storage_emulator"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(command + ["start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
                                         f"--default-bucket={BUCKET}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.2)
    patch = pytest.MonkeyPatch()
    patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    # Beam looks for Google credentials before its first gs:// access and, finding none here,
    # retries with backoff for ~25 s before it connects anonymously; the emulator wants
    # anonymous access anyway, so the test says so up front.
    from apache_beam.internal.gcp import auth

    patch.setattr(auth, "get_service_credentials", lambda pipeline_options: None)
    from google.cloud import storage

    yield storage.Client.create_anonymous_client().bucket(BUCKET)
    patch.undo()
    server.terminate()
    server.wait(timeout=10)


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

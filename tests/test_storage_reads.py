"""pipeline.storage: gs:// reads through one client per process, one request per object, against
a GCS emulator server on loopback (conftest's gcs_emulator)."""

import concurrent.futures
import hashlib
import http.server
import threading
from urllib.parse import quote

import numpy as np
import pytest

from pipeline import file_reads, select, storage
from pipeline.file_reads import InputRejected

BUCKET = "storage-reads-test"  # the bucket conftest's gcs_emulator creates
OBJECTS = 120


@pytest.fixture(scope="module")
def uploaded(gcs_emulator, tmp_path_factory):
    """{gs:// URI: the local file it was uploaded from}, of OBJECTS files of 1 to 6 KB."""
    from google.cloud import storage as gcs

    folder = tmp_path_factory.mktemp("objects")
    bucket = gcs.Client.create_anonymous_client().bucket(gcs_emulator.bucket)
    random = np.random.default_rng(7)
    files = {}
    for number in range(OBJECTS):
        path = folder / f"image-{number:03d}.png"
        path.write_bytes(random.bytes(int(random.integers(1000, 6000))))
        bucket.blob(f"images/{path.name}").upload_from_filename(str(path))
        files[f"gs://{gcs_emulator.bucket}/images/{path.name}"] = path
    for name, data in (("empty.png", b""), ("large.png", b"x" * 100)):
        bucket.blob(name).upload_from_string(data)
    return files


def test_many_threads_share_one_client_and_read_every_byte(uploaded, monkeypatch):
    monkeypatch.setattr(storage, "_current", None)  # this process starts with no client
    before = storage.clients_created()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        read = dict(zip(uploaded, pool.map(lambda uri: file_reads.read_file(uri, 1 << 20), uploaded)))
    assert storage.clients_created() - before == 1
    assert all(read[uri] == path.read_bytes() for uri, path in uploaded.items())
    # Its pool keeps a connection for each of those threads (the emulator, HTTP/1.0, closes
    # them; Cloud Storage keeps them open).
    pool_manager = storage.client()._http.get_adapter(storage.client()._connection.API_BASE_URL).poolmanager
    assert pool_manager.connection_pool_kw["maxsize"] >= 64


def test_one_request_per_read(gcs_emulator, uploaded):
    uris = sorted(uploaded)[:10]
    storage.client()  # built, and every bucket lookup it might make made, before counting
    before = len(gcs_emulator.settled_requests())
    for uri in uris:
        file_reads.read_file(uri, 1 << 20)
    served = gcs_emulator.settled_requests()[before:]
    # Media GETs (no metadata request first), one per object, in the order read.
    assert [(method, path.split("?")[0], "alt=media" in path) for method, path, _ in served] == [
        ("GET", f"/download/storage/v1/b/{BUCKET}/o/{quote(uri.split('/', 3)[3], safe='')}", True) for uri in uris]


def test_a_read_asks_for_one_byte_more_than_allowed(gcs_emulator, uploaded):
    uri = sorted(uploaded)[0]
    size = uploaded[uri].stat().st_size
    assert storage.read_bounded(uri, 99) == uploaded[uri].read_bytes()[:100]
    assert storage.read_bounded(uri, size + 10) == uploaded[uri].read_bytes()


def test_too_large_missing_and_empty_objects(gcs_emulator, uploaded):
    large = f"gs://{BUCKET}/large.png"
    with pytest.raises(InputRejected, match=r"^too_large: more than --max_bytes=50 bytes read \(the read stopped"):
        file_reads.read_file(large, 50)
    before = len(gcs_emulator.settled_requests())
    with pytest.raises(InputRejected, match=r"^too_large: 100 bytes > --max_bytes=50 \(refused before reading\)$"):
        file_reads.read_file(large, 50, size=100)
    assert len(gcs_emulator.settled_requests()) == before, "a listed size over the limit is refused without a request"
    assert file_reads.read_file(large, 100) == b"x" * 100
    assert file_reads.read_file(f"gs://{BUCKET}/empty.png", 100) == b""
    with pytest.raises(InputRejected, match=r"^unreadable: NotFound: 404 GET .*/o/missing\.png"):
        file_reads.read_file(f"gs://{BUCKET}/missing.png", 100)
    with pytest.raises(InputRejected, match=r"^unreadable: NotFound: 404 "):
        file_reads.read_file("gs://no-such-bucket/image.png", 100)
    with pytest.raises(InputRejected, match=r"^unreadable: ValueError: .* names no object"):
        file_reads.read_file(f"gs://{BUCKET}/", 100)


class _CloudStorageAnswers(http.server.BaseHTTPRequestHandler):
    """What Cloud Storage answers where the emulator answers otherwise: 416 for a range on an
    empty object, 403 for an object the credentials may not read."""

    def do_GET(self):
        if "/o/empty.png" in self.path:
            self.send_response(416)
            self.send_header("Content-Range", "bytes */0")
            body = b""
        else:
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            body = b'{"error": {"code": 403, "message": "reader does not have storage.objects.get access"}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_cloud_storage_answers_to_an_empty_and_a_forbidden_object(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CloudStorageAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        assert file_reads.read_file("gs://bucket/empty.png", 100) == b""
        with pytest.raises(InputRejected, match=r"^unreadable: Forbidden: 403 GET .*storage\.objects\.get access"):
            file_reads.read_file("gs://bucket/secret.png", 100)
    finally:
        server.shutdown()
        server.server_close()


def test_a_multi_process_pipeline_builds_one_client_per_process(gcs_emulator, uploaded):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that, equal_to

    expected = [(uri, hashlib.sha256(path.read_bytes()).hexdigest()) for uri, path in uploaded.items()]

    class ReadObject(beam.DoFn):  # defined here: pickled by value, as worker processes cannot import tests/
        def process(self, uri):
            from pipeline import file_reads

            yield uri, hashlib.sha256(file_reads.read_file(uri, 1 << 20)).hexdigest()

    def add(pipeline):
        read = (pipeline | beam.Create(sorted(uploaded)) | beam.Reshuffle() | beam.ParDo(ReadObject()))
        assert_that(read, equal_to(expected))

    # Worker processes inherit STORAGE_EMULATOR_HOST, so their storage client is anonymous and
    # looks for no credentials. (Not this fixture's patch of Beam's lookup, which they do not
    # inherit: Beam's own gs:// code would spend ~25 s there looking, and this DoFn never calls it.)
    options = select.pipeline_options(["--direct_num_workers=3", "--direct_running_mode=multi_processing"])
    result = select.run_pipeline(options, add)
    counters = result.metrics().query(MetricsFilter().with_namespace("ReadImages").with_name("storage_clients"))
    built = sum(counter.committed for counter in counters["counters"])
    assert 1 <= built <= 3, f"{built} storage clients for 3 worker processes"

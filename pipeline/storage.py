"""Reads of gs:// objects through one Cloud Storage client per process, shared by every thread.

Beam's `FileSystems.open` builds a new GCS client and HTTP session for every file it opens
(~1.2 ms of Python CPU each, and no connection is reused across reads), then asks for the
object's metadata before its bytes: two requests and a client per image, which caps one SDK
process near 800 images/s before any byte arrives. Here a process builds its client once,
lazily and under a lock, and each read is one media GET of the object, ranged to at most
`max_bytes + 1` bytes (one more than allowed says the object is too large), so an object
larger than the listing said (or one that grew since) is never read whole.

Credentials are what google-cloud-storage picks itself: anonymous when STORAGE_EMULATOR_HOST
names an emulator (no lookup at all), else Application Default Credentials (a Dataflow worker's
service account). No project is looked up: reading objects bills the bucket's project.

Errors are the library's (google.api_core.exceptions.NotFound, Forbidden, requests'
ConnectionError after its retries...); pipeline.file_reads turns them into `unreadable: ...`.
This module imports neither TensorFlow nor Beam's GCS filesystem.
"""

import io
import os
import threading

from apache_beam.metrics import Metrics

# Reads in flight per process: stage 1 keeps --read_threads (default 64) reads going, and
# stage 2's shard writers and thumbnails --fetch_threads (16 for gs://) each; a pool this size lets every
# one of them keep its connection between reads instead of opening (and, past the pool's size,
# discarding) one per read, which with TLS costs more than reading a small image.
POOL_SIZE = 128
# Hosts the pools are kept for: storage.googleapis.com, or the emulator (and a spare).
POOL_HOSTS = 4

_lock = threading.Lock()
_current = None
_clients_created = 0
_client_counter = Metrics.counter("ReadImages", "storage_clients")


def clients_created():
    """How many storage clients this process has built (1 after any number of reads)."""
    return _clients_created


def split_uri(uri):
    """`gs://bucket/name` -> ("bucket", "name"). Raises ValueError for anything else."""
    if not uri.startswith("gs://"):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise ValueError(f"{uri!r} names no object (expected gs://BUCKET/OBJECT)")
    return bucket, name


def _build_client():
    import google.auth.exceptions
    import requests
    from google.cloud import storage

    try:
        # project=None: no project lookup (a metadata-server round trip on GCE); reads need none.
        client = storage.Client(project=None)
    except google.auth.exceptions.DefaultCredentialsError:
        # As Beam's reader does: no credentials found, so read anonymously (public buckets).
        client = storage.Client.create_anonymous_client()
    # 3.x looks up each bucket's metadata in a background GET (and again after a 404) only to
    # tag OpenTelemetry spans, traced or not: requests beside the reads, to a bucket that a
    # reader may not be allowed to get. Without the cache every read is its one GET.
    client._bucket_metadata_cache = None
    # The library builds its HTTP session lazily on first use, and two threads racing there
    # would build two; touching it here, under the lock, builds the one every thread shares.
    session = client._http
    # A mutual-TLS session mounts an adapter holding the client certificate: keep it (its pool
    # is requests' default of 10) rather than replace it with one that cannot authenticate.
    if not getattr(session, "is_mtls", False):
        adapter = requests.adapters.HTTPAdapter(pool_connections=POOL_HOSTS, pool_maxsize=POOL_SIZE)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return client


def _identity():
    # A process forked after building the client (its sockets would be shared with the parent)
    # builds its own, and so does one whose STORAGE_EMULATOR_HOST changed (tests start one
    # emulator per module): the client is built for the endpoint the environment names.
    return os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST")


def client():
    """This process's storage client, built on first use."""
    global _current, _clients_created
    identity = _identity()
    current = _current  # (identity, client), replaced whole: a reader never mixes two
    if current is not None and current[0] == identity:
        return current[1]
    with _lock:
        if _current is None or _current[0] != identity:
            _current = (identity, _build_client())
            _clients_created += 1
            # Counted in the bundle that built it; outside a bundle Beam drops the increment.
            _client_counter.inc()
        return _current[1]


def read_bounded(uri, max_bytes):
    """At most `max_bytes + 1` bytes of the object `uri` (gs://), from its start, in one request
    (more only where the client retries a transient error, from the byte it had reached).

    The GET carries `Range: bytes=0-max_bytes`; no metadata is fetched first. An empty object
    is b"": Cloud Storage answers a range on an empty object with 416 (not satisfiable), which
    is that object's only possible reading. Bytes are the stored ones (raw_download: no
    decompressive transcoding of gzip-encoded objects), as Beam's reader returns them.
    """
    from google.api_core import exceptions

    bucket, name = split_uri(uri)
    blob = client().bucket(bucket).blob(name)
    sink = io.BytesIO()
    try:
        # checksum=None: a ranged response carries no checksum of its bytes to compare with.
        blob.download_to_file(sink, start=0, end=max_bytes, raw_download=True, checksum=None)
    except exceptions.RequestRangeNotSatisfiable:
        return b""
    return sink.getvalue()

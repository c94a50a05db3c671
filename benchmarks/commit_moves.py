"""The commit's moves on gs:// (a GCS emulator on loopback): one chunk at a time (what one
FileSystems.rename of every staged file did) against pipeline.commit's CHUNKS_IN_FLIGHT.

  python -m benchmarks.commit_moves [--shards=2000] [--concurrency=32] [--latency_ms=0,50]

N small train shards (100-200 bytes) are uploaded to gs://BUCKET/out/_staging-x/, then
`pipeline.commit.move_files` (step 4) publishes them into gs://BUCKET/out/; a listing through
another client checks that every file arrived with its size and that staging is empty. Each
side runs on an emulator of its own (gcp-storage-emulator, in memory), changed in two ways:

- At every change the emulator rewrites its whole metadata (every object it ever held, the
  deleted ones too) for a restart that an in-memory server never does: the time of a move
  grows with everything before it (2,000 shards: minutes a side, all of it the emulator's).
  Here it does not.
- On loopback a request costs the client no wait, and the emulator serves one at a time: the
  serial side waits only on the emulator's CPU, as the parallel one does, so the two take the
  same time. What the chunks in flight hide is the wait for Cloud Storage, which serves many
  requests at once. With --latency_ms=L the emulator holds each request L ms before serving
  it, with requests in flight waiting side by side (then served one at a time, as before): a
  model of that wait, not a measurement of Cloud Storage (uploads, which stage the files
  before the clock starts, are served without it).
"""

import argparse
import concurrent.futures
import subprocess
import sys
import time

from benchmarks import gcs_emulator

# pipeline.commit (TensorFlow with it) and benchmarks.storage_reads are imported where they are
# used: the emulator's own process imports this module for `serve`, and needs neither.

DEFAULT_SHARDS = 2000
DEFAULT_LATENCIES_MS = (0, 50)
BUCKET = "commit-moves-bench"
STAGING = "out/_staging-x"


def serve(port, latency_ms):
    """The emulator, changed as the module docstring says (runs in its own process)."""
    import http.server
    import threading

    from gcp_storage_emulator import __main__ as emulator, server, storage

    storage.Storage._write_config_to_file = lambda self: None
    if latency_ms:
        served = threading.Lock()  # the emulator's state is not made for threads: one request at a time
        http.server.HTTPServer = http.server.ThreadingHTTPServer  # what the emulator's server thread builds
        for method in ("do_GET", "do_POST", "do_DELETE", "do_PUT", "do_PATCH"):
            def held(self, _serve=getattr(server.RequestHandler, method)):
                if not self.path.startswith("/upload/"):  # staging's uploads are not timed: no wait
                    time.sleep(latency_ms / 1000)
                with served:
                    _serve(self)

            setattr(server.RequestHandler, method, held)
    emulator.main(["start", "--host=127.0.0.1", f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}",
                   "--quiet"])


class _Emulator:
    def __init__(self, latency_ms):
        port = gcs_emulator.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.commit_moves import serve; "
                                         f"serve({port}, {latency_ms})"], stdout=subprocess.DEVNULL)
        gcs_emulator.wait_for_port(port, self._server, 60)

    def stop(self):
        self._server.terminate()
        self._server.wait(timeout=10)


def _listed(bucket, prefix):
    """{name directly under `prefix`/: size}."""
    return {blob.name[len(prefix) + 1:]: blob.size for blob in bucket.list_blobs(prefix=prefix + "/")
            if "/" not in blob.name[len(prefix) + 1:]}


def _side(shards, concurrency, latency_ms):
    """Stages `shards` files, then times their moves with `concurrency` chunks in flight."""
    from apache_beam.io.filesystems import FileSystems
    from google.cloud import storage as gcs

    from benchmarks.storage_reads import _with_environment
    from pipeline import commit, records

    emulator = _Emulator(latency_ms)
    undo = _with_environment(emulator.url)
    try:
        bucket = gcs.Client.create_anonymous_client().bucket(BUCKET)
        sizes = {records.shard_name(records.TRAIN_PREFIX, index, shards, records.TRAIN_SUFFIX): 100 + index % 101
                 for index in range(shards)}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # the client keeps 10 connections
            list(pool.map(lambda item: bucket.blob(f"{STAGING}/{item[0]}").upload_from_string(b"x" * item[1]),
                          sizes.items()))
        FileSystems.exists(f"gs://{BUCKET}/out/")  # Beam's first gs:// call imports and sets up: not timed
        names = sorted(sizes)
        started = time.perf_counter()
        commit.move_files([f"gs://{BUCKET}/{STAGING}/{name}" for name in names],
                          [f"gs://{BUCKET}/out/{name}" for name in names], concurrency=concurrency)
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 2), "sizes_match": _listed(bucket, "out") == sizes,
                "left_in_staging": len(_listed(bucket, STAGING))}
    finally:
        undo()
        emulator.stop()


def run(shards=DEFAULT_SHARDS, concurrency=None, latencies_ms=DEFAULT_LATENCIES_MS):
    """Serial and parallel moves of `shards` files, per modelled latency; the figures."""
    from pipeline import commit

    concurrency = concurrency or commit.CHUNKS_IN_FLIGHT
    by_latency = []
    for latency_ms in latencies_ms:
        serial, parallel = _side(shards, 1, latency_ms), _side(shards, concurrency, latency_ms)
        by_latency.append({"latency_ms": latency_ms, "serial": serial, "parallel": parallel,
                           "speedup": round(serial["seconds"] / parallel["seconds"], 2)})
    return {"shards": shards, "chunk_files": commit.CHUNK_FILES, "concurrency": concurrency, "runs": by_latency}


def rows(result):
    """(figure, measured) for (h) of `make bench`."""
    lines = []
    for run_ in result["runs"]:
        wait = f"+{run_['latency_ms']} ms a request (modelled)" if run_["latency_ms"] else "loopback"
        lines.append((f"(h) commit moves, {result['shards']:,} shards on the GCS emulator, {wait}: 1 vs "
                      f"{result['concurrency']} chunks of {result['chunk_files']} in flight",
                      f"{run_['serial']['seconds']:.2f} vs {run_['parallel']['seconds']:.2f} s = "
                      f"{run_['speedup']:.2f}x"))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS)
    parser.add_argument("--concurrency", type=int, help="chunks in flight (default: pipeline.commit's)")
    parser.add_argument("--latency_ms", default=",".join(map(str, DEFAULT_LATENCIES_MS)),
                        help="comma-separated modelled waits per request, one run each (0: none)")
    args = parser.parse_args()
    result = run(args.shards, args.concurrency, [int(value) for value in args.latency_ms.split(",")])
    for run_ in result["runs"]:
        for side in ("serial", "parallel"):
            figures = run_[side]
            print(f"latency {run_['latency_ms']} ms, {side}: {figures['seconds']:.2f} s; every file arrived with "
                  f"its size: {figures['sizes_match']}, left in staging: {figures['left_in_staging']}")
    for figure, measured in rows(result):
        print(f"{figure}: {measured}")


if __name__ == "__main__":
    main()

"""Image reads: local disk, gs:// through Beam's FileSystems (the old path), gs:// through
pipeline.storage's shared client (the new path).

  python -m benchmarks.storage_reads [--images=2000] [--threads=64]

N small PNGs (2-5 KB, made with numpy and Pillow) are written to a local folder and uploaded to
a GCS emulator (gcp-storage-emulator, in memory, on loopback); then all N are read with T
threads through `pipeline.file_reads.read_file` from local paths, through a reproduction of
the old gs:// read (Beam's `FileSystems.open` per image: a new client, a metadata request,
then the bytes), and through `read_file` on gs:// (one shared client, one GET per image).

Per path: images/s (wall), CPU ms per image of this process (all its threads: the client side,
what an accelerator host pays; the emulator runs in its own process), HTTP requests per image
(from the emulator's log), and whether every byte read equals the file uploaded. The emulator
is one single-threaded Python server closing every connection (HTTP/1.0), on the same cores:
absolute gs:// rates here say little about Cloud Storage; the old/new ratio and the client CPU
and requests per image are the figures.
"""

import argparse
import concurrent.futures
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.gcs_emulator import GcsEmulator
from pipeline import file_reads, storage

DEFAULT_IMAGES = 2000
DEFAULT_THREADS = 64
MAX_BYTES = 64 << 20
BUCKET = "storage-reads-bench"


def make_images(folder, count, seed=0):
    """`count` PNGs of 2-5 KB in `folder` (noisy gradients, 24-40 px); their paths."""
    random = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for number in range(count):
        side = int(random.integers(24, 41))
        ramp = np.linspace(0, 255, side)
        base = (ramp[:, None, None] + ramp[None, :, None] * random.uniform(0, 1, 3)) / 2
        pixels = np.clip(base + random.normal(0, 24, (side, side, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"image-{number:05d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _read_through_beam(uri, max_bytes, size):
    """The old gs:// read of pipeline.file_reads.read_file: Beam's FileSystems.open (a GcsIO
    and storage client for this one file, the object's metadata, then a ranged read of its
    bytes) and one bounded read."""
    del size  # the old path refused by the listed size first; every size here is under the limit
    with file_reads.open_uri(uri) as handle:
        return handle.read(max_bytes + 1)


def _timed_reads(read, items, threads, emulator):
    served = len(emulator.settled_requests()) if emulator else 0
    wall, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda item: read(item[0], MAX_BYTES, item[1]), items))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {"images_per_s": round(len(items) / wall, 1), "cpu_ms_per_image": round(1000 * cpu / len(items), 3)}
    if emulator:
        figures["requests_per_image"] = round((len(emulator.settled_requests()) - served) / len(items), 3)
    return results, figures


def _with_environment(emulator_url):
    """Points google-cloud-storage and Beam at the emulator; returns an undo function."""
    from apache_beam.internal.gcp import auth

    saved_host = os.environ.get("STORAGE_EMULATOR_HOST")
    saved_credentials = auth._Credentials._credentials_init, auth._Credentials._credentials
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    # Beam retries its Google credential lookup for ~25 s before it reads anonymously; the
    # emulator wants none, so Beam starts from "looked, found none" (its lookup is once per
    # process, so this removes no per-read cost from the old path).
    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None

    def undo():
        auth._Credentials._credentials_init, auth._Credentials._credentials = saved_credentials
        if saved_host is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved_host

    return undo


def run(images=DEFAULT_IMAGES, threads=DEFAULT_THREADS, workdir=None):
    """Measures the three read paths on `images` PNGs with `threads` threads; returns the figures."""
    from google.cloud import storage as gcs

    owned = workdir is None
    workdir = tempfile.mkdtemp(prefix="storage_reads_") if owned else workdir
    emulator = GcsEmulator(workdir, BUCKET)
    undo = _with_environment(emulator.url)
    try:
        paths = make_images(os.path.join(workdir, "images"), images)
        local = {path: open(path, "rb").read() for path in paths}
        uris = {f"gs://{BUCKET}/images/{os.path.basename(path)}": path for path in paths}
        bucket = gcs.Client.create_anonymous_client().bucket(BUCKET)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: bucket.blob(item[0].split("/", 3)[3]).upload_from_filename(item[1]),
                          uris.items()))

        local_items = [(path, len(local[path])) for path in paths]
        remote_items = [(uri, len(local[path])) for uri, path in uris.items()]
        expected_remote = [local[path] for path in uris.values()]
        figures = {}
        results, figures["local"] = _timed_reads(file_reads.read_file, local_items, threads, None)
        figures["local"]["bytes_match"] = results == [local[path] for path in paths]
        results, figures["beam_filesystems"] = _timed_reads(_read_through_beam, remote_items, threads, emulator)
        figures["beam_filesystems"]["bytes_match"] = results == expected_remote
        built = storage.clients_created()
        results, figures["shared_client"] = _timed_reads(file_reads.read_file, remote_items, threads, emulator)
        figures["shared_client"]["bytes_match"] = results == expected_remote
        figures["shared_client"]["clients_built"] = storage.clients_created() - built
    finally:
        undo()
        emulator.stop()
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"images": images, "threads": threads, "bytes": sum(len(data) for data in local.values()),
            "paths": figures,
            "shared_over_beam": round(figures["shared_client"]["images_per_s"]
                                      / figures["beam_filesystems"]["images_per_s"], 2)}


_NAMES = {"local": "local disk", "beam_filesystems": "emulator, Beam FileSystems.open per read (old)",
          "shared_client": "emulator, one shared storage client (new)"}


def rows(result):
    """(figure, measured) for (f) of `make bench`."""
    lines = []
    for key, name in _NAMES.items():
        path = result["paths"][key]
        requests = f", {path['requests_per_image']:g} req/img" if "requests_per_image" in path else ""
        lines.append((f"(f) image reads, {result['images']:,} PNGs, {result['threads']} threads: {name}",
                      f"{path['images_per_s']:.1f} img/s, {path['cpu_ms_per_image']:.2f} CPU ms/img{requests}"))
    lines.append(("(f) image reads, gs:// new over old", f"{result['shared_over_beam']:.2f}x img/s"))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    result = run(args.images, args.threads)
    print(f"{result['images']} PNGs, {result['bytes'] / result['images'] / 1000:.1f} KB each on average")
    for figure, measured in rows(result):
        print(f"{figure}: {measured}")


if __name__ == "__main__":
    main()

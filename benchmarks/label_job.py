"""The labeling job against the bare teacher, and its peak memory as the input grows.

  python -m benchmarks.label_job [--model=resnet_rs_50] [--images=512] [--memory_sizes=1000,10000]

Throughput: the same N photos (crops of the photos that ship with scikit-learn and
scikit-image, as JPEG files) go (a) through `Teacher.predict` in fixed batches, already
decoded, and (b) through the whole job (`pipeline.label.run` on the local runner: read,
decode, RunInference, select, write, aggregates, commit). The ratio job / bare is the cost
of everything around the model, job start-up included.

Memory: the job runs in a fresh process over 1k, 10k, ... tiny PNGs with a tiny teacher;
the peak RSS of that process (its own and its waited-for children's) is read with wait4.
Flat is the goal: nothing in the job materialises the input.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
import teacher  # noqa: E402
from pipeline import decode, label  # noqa: E402


def _photos():
    import skimage.data
    import sklearn.datasets

    photos = list(sklearn.datasets.load_sample_images().images)
    photos += [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    return [photo for photo in photos if photo.ndim == 3]


def write_photo_crops(folder, count, seed=0):
    """`count` JPEG crops (160-320 px sides) of real photos; returns their paths."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = rng.integers(160, 321, 2)
        height, width = min(height, photo.shape[0]), min(width, photo.shape[1])
        top = rng.integers(0, photo.shape[0] - height + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        path = os.path.join(folder, f"photo_{index:06d}.jpg")
        Image.fromarray(photo[top:top + height, left:left + width, :3]).save(path, quality=90)
        paths.append(path)
    return paths


def write_tiny_pngs(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"tiny_{index:06d}.png"))


def throughput(model_name, count, batch_size, workdir):
    images_dir = os.path.join(workdir, "photos")
    os.makedirs(images_dir)
    paths = write_photo_crops(images_dir, count)
    teacher_dir = os.path.join(workdir, "teacher")
    teacher.export(models.create(model_name), model_name, teacher_dir, random_init=True, source="random-init")
    decoded = []
    for path in paths:
        with open(path, "rb") as handle:
            decoded.append(decode.decode(handle.read(), 100_000_000)[0])
    loaded = teacher.load(teacher_dir, batch_size=batch_size)
    loaded.predict(decoded[:batch_size])  # compile outside the timing
    start = time.perf_counter()
    for offset in range(0, count, batch_size):
        loaded.predict(decoded[offset:offset + batch_size])
    bare = count / (time.perf_counter() - start)
    start = time.perf_counter()
    label.run([f"--teacher={teacher_dir}", f"--input={images_dir}/*", f"--output={workdir}/labels",
               f"--min_batch_size={batch_size}", f"--max_batch_size={batch_size}", "--min_confidence=0",
               "--allow_random_teacher"])
    job = count / (time.perf_counter() - start)
    return {"images": count, "bare_teacher_images_per_s": round(bare, 2), "job_images_per_s": round(job, 2),
            "job_over_bare": round(job / bare, 3), "teacher_compile_mode": loaded.compile_mode}


# Runs argv[1:] and prints its peak RSS in KiB (wait4: the child and its waited-for children).
_MEASURE_CHILD = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
if status:
    sys.exit(child.stderr.read().decode()[-2000:])
print(usage.ru_maxrss)
"""


def peak_memory(sizes, workdir):
    teacher_dir = os.path.join(workdir, "tiny_teacher")
    teacher.export(models.create("resnet_rs_tiny", num_classes=10), "resnet_rs_tiny", teacher_dir,
                   random_init=True, source="random-init")
    results = []
    for size in sizes:
        folder = os.path.join(workdir, f"tiny_{size}")
        os.makedirs(folder)
        write_tiny_pngs(folder, size)
        command = [sys.executable, "-m", "pipeline.label", f"--teacher={teacher_dir}", f"--input={folder}/*",
                   f"--output={workdir}/labels_{size}", "--min_confidence=0", "--max_batch_size=64",
                   "--allow_random_teacher"]
        start = time.perf_counter()
        # Linux counts a forked child's copy of its parent's memory in the child's maxrss, and
        # this process holds a resnet_rs_50 by now; a small fresh process starts the job instead.
        result = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, *command], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode:
            raise RuntimeError(f"labeling {size} images failed: {result.stderr[-2000:]}")
        results.append({"images": size, "peak_rss_mb": round(int(result.stdout.split()[-1]) / 1024, 1),
                        "seconds": round(elapsed, 1), "images_per_s": round(size / elapsed, 1)})
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_rs_50")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--memory_sizes", default="1000,10000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        speed = throughput(args.model, args.images, args.batch_size, workdir)
        memory = peak_memory([int(size) for size in args.memory_sizes.split(",") if size], workdir)
    print(f"{args.model} at {models.config(args.model).eval_image_size}px, {speed['images']} photos: "
          f"bare Teacher.predict {speed['bare_teacher_images_per_s']} img/s, whole job "
          f"{speed['job_images_per_s']} img/s, job/bare {speed['job_over_bare']}")
    for row in memory:
        print(f"labeling job over {row['images']:>6} tiny images: peak RSS {row['peak_rss_mb']} MB, "
              f"{row['seconds']} s ({row['images_per_s']} img/s)")
    print(json.dumps({"model": args.model, "throughput": speed, "memory": memory}))


if __name__ == "__main__":
    main()

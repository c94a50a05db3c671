"""The labeling job against the bare teacher; its peak memory and CPU cost as the input grows.

  python -m benchmarks.label_job [--model=resnet_rs_50] [--images=5000] [--batch_size=32]
      [--memory_sizes=10000,50000,100000]

(a) Throughput: the same N photos (crops of the photos that ship with scikit-learn and
scikit-image, 160-320 px sides, as JPEG files) go (1) through `Teacher.predict` in fixed
batches, already decoded (each batch is decoded outside the timing; only predict is timed),
and (2) through the whole job (pipeline.label: both stages) on the local runner, timed from
`pipeline.label.run` to its return. The ratio job / bare is the cost of everything around
the model, job start-up included. Goal: >= 0.95.

(d) Memory: the whole job runs in a fresh process (`python -m pipeline.label`) over 10k,
50k and 100k tiny PNGs (24x24) with a tiny teacher (resnet_rs_tiny, 10 classes). A small
wrapper process starts it and reads its rusage with os.wait4: ru_maxrss is the largest peak
RSS among that process and its waited-for descendants (not their sum). Flatness is the
peak at the largest size over the peak at the smallest, as +X%. Goal: within +15%:
nothing in the job may materialise the input.

(e) CPU: from the same wait4 rusage, the job's CPU seconds (ru_utime + ru_stime, the
process and its waited-for descendants) and the wall seconds from start to exit. Per run:
CPU ms per image and the cores it kept busy (CPU s / wall s, against os.cpu_count()).
The marginal cost (CPU at the largest size - CPU at the smallest) / (largest - smallest)
images excludes the fixed start-up (TensorFlow import, teacher load, pipeline
construction); 1000 / marginal ms is images/s per core. Goal: <= 2 ms per image.
"""

import argparse
import json
import os
import shutil
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

DEFAULT_IMAGES = 5000
DEFAULT_MEMORY_SIZES = "10000,50000,100000"
GOAL_JOB_OVER_BARE = 0.95  # (a): job images/s over bare Teacher.predict images/s, at least
GOAL_PEAK_GROWTH_PCT = 15.0  # (d): peak RSS at the largest size over the smallest, at most +15%
GOAL_MARGINAL_CPU_MS = 2.0  # (e): marginal CPU ms per image, at most


def photos():
    """The RGB photos that ship with scikit-learn and scikit-image (no download)."""
    import skimage.data
    import sklearn.datasets

    shipped = list(sklearn.datasets.load_sample_images().images)
    shipped += [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    return [photo for photo in shipped if photo.ndim == 3]


def write_photo_crops(folder, count, seed=0):
    """`count` JPEG crops (160-320 px sides) of real photos; returns their paths."""
    rng = np.random.default_rng(seed)
    sources = photos()
    paths = []
    for index in range(count):
        photo = sources[index % len(sources)]
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


def _decode_files(paths):
    decoded = []
    for path in paths:
        with open(path, "rb") as handle:
            decoded.append(decode.decode(handle.read(), 100_000_000)[0])
    return decoded


def throughput(model_name, count, batch_size, workdir):
    """(a): bare `Teacher.predict` and the whole job over the same `count` photo crops."""
    images_dir = os.path.join(workdir, "photos")
    os.makedirs(images_dir)
    start = time.perf_counter()
    paths = write_photo_crops(images_dir, count)
    write_seconds = time.perf_counter() - start
    teacher_dir = os.path.join(workdir, "teacher")
    teacher.export(models.create(model_name), model_name, teacher_dir, random_init=True, source="random-init")
    loaded = teacher.load(teacher_dir, batch_size=batch_size)
    loaded.predict(_decode_files(paths[:batch_size]))  # compile outside the timing
    # Decoded a batch at a time (5,000 decoded crops would hold about 1 GB), outside the timing.
    predict_seconds = 0.0
    for offset in range(0, count, batch_size):
        batch = _decode_files(paths[offset:offset + batch_size])
        start = time.perf_counter()
        loaded.predict(batch)
        predict_seconds += time.perf_counter() - start
    bare = count / predict_seconds
    compile_mode = loaded.compile_mode
    del loaded, batch  # the job loads its own teacher
    start = time.perf_counter()
    # The compile mode the bare teacher chose, so the job does not measure both again at load.
    label.run([f"--teacher={teacher_dir}", f"--input={images_dir}/*", f"--output={workdir}/labels",
               f"--max_batch_size={batch_size}", f"--jit_compile={compile_mode}", "--min_confidence=0",
               "--allow_random_teacher"])
    job_seconds = time.perf_counter() - start
    job = count / job_seconds
    return {"images": count, "batch_size": batch_size, "photo_write_s": round(write_seconds, 1),
            "bare_teacher_s": round(predict_seconds, 1), "job_s": round(job_seconds, 1),
            "bare_teacher_images_per_s": round(bare, 2), "job_images_per_s": round(job, 2),
            "job_over_bare": round(job / bare, 3), "goal_job_over_bare": GOAL_JOB_OVER_BARE,
            "meets_goal": job / bare >= GOAL_JOB_OVER_BARE, "teacher_compile_mode": compile_mode}


# Runs argv[1:] and prints, as JSON, its peak RSS in KiB, its CPU seconds (user, system) and
# its wall seconds. wait4's rusage covers the child and the descendants it waited for. stderr
# goes to a file, not a pipe: a pipe nobody reads would block a chatty child once full.
_MEASURE_CHILD = """
import json, os, subprocess, sys, tempfile, time
with tempfile.TemporaryFile() as errors:
    start = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=errors)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status:
        errors.seek(0)
        sys.exit(errors.read().decode(errors="replace")[-2000:])
print(json.dumps({"maxrss_kb": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                  "wall_s": wall}))
"""


def job_resources(sizes, workdir):
    """(d) and (e): one fresh-process run of the whole job per size; peak RSS, CPU and wall time."""
    teacher_dir = os.path.join(workdir, "tiny_teacher")
    teacher.export(models.create("resnet_rs_tiny", num_classes=10), "resnet_rs_tiny", teacher_dir,
                   random_init=True, source="random-init")
    runs = []
    for size in sizes:
        folder = os.path.join(workdir, f"tiny_{size}")
        output = os.path.join(workdir, f"labels_{size}")
        os.makedirs(folder)
        write_tiny_pngs(folder, size)
        command = [sys.executable, "-m", "pipeline.label", f"--teacher={teacher_dir}", f"--input={folder}/*",
                   f"--output={output}", "--min_confidence=0", "--max_batch_size=64",
                   "--allow_random_teacher"]
        # Linux counts a forked child's copy of its parent's memory in the child's maxrss, and
        # this process may hold a resnet_rs_50 by now; a small fresh process starts the job instead.
        result = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, *command], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"labeling {size} images failed: {result.stderr[-2000:]}")
        usage = json.loads(result.stdout.strip().splitlines()[-1])
        cpu = usage["user_s"] + usage["sys_s"]
        runs.append({"images": size, "peak_rss_mb": round(usage["maxrss_kb"] / 1024, 1),
                     "cpu_s": round(cpu, 2), "user_s": round(usage["user_s"], 2), "sys_s": round(usage["sys_s"], 2),
                     "wall_s": round(usage["wall_s"], 2), "images_per_s": round(size / usage["wall_s"], 1),
                     "cpu_ms_per_image": round(1000 * cpu / size, 3),
                     "cores_busy": round(cpu / usage["wall_s"], 2)})
        shutil.rmtree(folder)  # 160k files in all at the default sizes
        shutil.rmtree(output)
    return runs


def memory_summary(runs):
    """(d): peak RSS per size and its growth from the smallest size to the largest."""
    smallest, largest = min(runs, key=lambda run: run["images"]), max(runs, key=lambda run: run["images"])
    growth = 100 * (largest["peak_rss_mb"] / smallest["peak_rss_mb"] - 1)
    return {"runs": [{"images": run["images"], "peak_rss_mb": run["peak_rss_mb"]} for run in runs],
            "smallest_images": smallest["images"], "largest_images": largest["images"],
            "peak_growth_pct": round(growth, 1), "goal_peak_growth_pct": GOAL_PEAK_GROWTH_PCT,
            "meets_goal": growth <= GOAL_PEAK_GROWTH_PCT}


def cpu_summary(runs):
    """(e): CPU per run, and the marginal CPU per image between the smallest and largest sizes."""
    smallest, largest = min(runs, key=lambda run: run["images"]), max(runs, key=lambda run: run["images"])
    marginal = images_per_s = None
    if largest["images"] > smallest["images"]:
        marginal = 1000 * (largest["cpu_s"] - smallest["cpu_s"]) / (largest["images"] - smallest["images"])
        images_per_s = 1000 / marginal if marginal > 0 else None
    return {"cpus": os.cpu_count(),
            "runs": [{key: run[key] for key in ("images", "cpu_s", "user_s", "sys_s", "wall_s", "cpu_ms_per_image",
                                                "cores_busy")} for run in runs],
            "marginal_from_images": smallest["images"], "marginal_to_images": largest["images"],
            "marginal_cpu_ms_per_image": None if marginal is None else round(marginal, 3),
            "marginal_images_per_s_per_core": None if images_per_s is None else round(images_per_s, 1),
            "goal_marginal_cpu_ms_per_image": GOAL_MARGINAL_CPU_MS,
            "meets_goal": marginal is not None and marginal <= GOAL_MARGINAL_CPU_MS,
            "cores_busy_at_largest": largest["cores_busy"]}


def short_count(count):
    """10000 -> '10k', 1500 -> '1,500'."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else format(count, ",")


def throughput_rows(model_name, speed):
    """(figure, measured) for (a)."""
    return [(f"(a) labeling job vs bare teacher, {model_name} at {models.config(model_name).eval_image_size} px, "
             f"{speed['images']:,} photos",
             f"{speed['job_images_per_s']:.1f} vs {speed['bare_teacher_images_per_s']:.1f} img/s = "
             f"{speed['job_over_bare']:.2f} (goal: >= {speed['goal_job_over_bare']:.2f})")]


def resource_rows(memory, cpu):
    """(figure, measured) for (d) and (e)."""
    rows = [(f"(d) labeling job peak RSS, {run['images']:,} tiny images", f"{run['peak_rss_mb']:.0f} MB")
            for run in memory["runs"]]
    rows.append((f"(d) peak RSS growth, {short_count(memory['largest_images'])} over "
                 f"{short_count(memory['smallest_images'])}",
                 f"{memory['peak_growth_pct']:+.1f}% (goal: within +{memory['goal_peak_growth_pct']:.0f}%)"))
    for run in cpu["runs"]:
        rows.append((f"(e) labeling job CPU, {run['images']:,} tiny images",
                     f"{run['cpu_s']:.1f} CPU s in {run['wall_s']:.1f} s wall, {run['cpu_ms_per_image']:.2f} ms/img, "
                     f"{run['cores_busy']:.1f} of {cpu['cpus']} cores"))
    span = f"{short_count(cpu['marginal_from_images'])}->{short_count(cpu['marginal_to_images'])}"
    marginal = ("n/a (needs two sizes)" if cpu["marginal_cpu_ms_per_image"] is None else
                f"{cpu['marginal_cpu_ms_per_image']:.2f} ms/img = "
                + ("n/a" if cpu["marginal_images_per_s_per_core"] is None
                   else f"{cpu['marginal_images_per_s_per_core']:.0f}") + " img/s per core")
    rows.append((f"(e) labeling pipeline CPU per image (tiny teacher, 24 px PNGs), marginal {span}",
                 f"{marginal} (goal <= {cpu['goal_marginal_cpu_ms_per_image']:g} ms)"))
    rows.append((f"(e) cores kept busy by a local run at {short_count(cpu['marginal_to_images'])}",
                 f"{cpu['cores_busy_at_largest']:.1f} of {cpu['cpus']}"))
    return rows


def parse_sizes(text):
    return [int(size) for size in text.split(",") if size.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_rs_50")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="photo crops for (a)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--memory_sizes", default=DEFAULT_MEMORY_SIZES,
                        help="comma-separated tiny-image counts for (d) and (e)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        speed = throughput(args.model, args.images, args.batch_size, os.path.join(workdir, "throughput"))
    with tempfile.TemporaryDirectory() as workdir:
        runs = job_resources(parse_sizes(args.memory_sizes), workdir)
    memory, cpu = memory_summary(runs), cpu_summary(runs)
    for figure, measured in throughput_rows(args.model, speed) + resource_rows(memory, cpu):
        print(f"{figure}: {measured}")
    print(json.dumps({"model": args.model, "throughput": speed, "memory": memory, "cpu": cpu}))


if __name__ == "__main__":
    main()

"""The labeling job over a list that grows: flat memory and CPU as the list grows tenfold, and
the cost of a rerun after a few new URIs.

  python -m benchmarks.label_growth [--sizes=20000,200000] [--added=2000]

Tiny PNGs (24x24) listed in a text file (`--input=LIST`, as a 130M-image run is given), a tiny
teacher (resnet_rs_tiny, 10 classes, --max_batch_size=64). Each size runs the whole job
(both stages) in a fresh process, measured as benchmarks.label_job measures (d) and (e): peak
RSS of the process tree (wait4's ru_maxrss: the largest, not the sum), CPU seconds, wall
seconds. Then the largest list plus `--added` new URIs is run again into the same prediction
index: its wall time, and from index.json how many units that run found new and how many
images the teacher labeled (the run's `predicted` counts).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import models  # noqa: E402
import teacher  # noqa: E402
from benchmarks.label_job import _MEASURE_CHILD, write_tiny_pngs  # noqa: E402

GOAL_PEAK_GROWTH_PCT = 15.0  # peak RSS at the largest list over the smallest, at most +15%
GOAL_CPU_MS_PER_IMAGE = 2.0  # marginal CPU per image between the two sizes, at most


def _list(path, folder, names):
    with open(path, "w") as handle:
        handle.writelines(f"{folder}/{name}\n" for name in names)
    return path


def _run(teacher_dir, list_path, output, predictions):
    command = [sys.executable, "-m", "pipeline.label", f"--teacher={teacher_dir}", f"--input={list_path}",
               f"--output={output}", f"--predictions={predictions}", "--min_confidence=0", "--max_batch_size=64",
               "--allow_random_teacher", "--overwrite", "--progress_every_s=0"]
    result = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, *command], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"labeling {list_path} failed: {result.stderr[-2000:]}")
    usage = json.loads(result.stdout.strip().splitlines()[-1])
    with open(os.path.join(predictions, "index.json")) as handle:
        last = json.load(handle)["runs"][-1]
    cpu = usage["user_s"] + usage["sys_s"]
    return {"peak_rss_mb": round(usage["maxrss_kb"] / 1024, 1), "cpu_s": round(cpu, 1),
            "wall_s": round(usage["wall_s"], 1), "new_units": last["new_units"],
            "teacher_labeled": last["predicted"]["labeled"] + last["predicted"]["rejected"]}


def measure(sizes, added, workdir):
    teacher_dir = os.path.join(workdir, "tiny_teacher")
    teacher.export(models.create("resnet_rs_tiny", num_classes=10), "resnet_rs_tiny", teacher_dir,
                   random_init=True, source="random-init")
    folder = os.path.join(workdir, "images")
    os.makedirs(folder)
    largest = max(sizes)
    write_tiny_pngs(folder, largest + added)
    names = sorted(os.listdir(folder))
    runs = []
    for size in sorted(sizes):
        run = _run(teacher_dir, _list(os.path.join(workdir, f"list_{size}.txt"), folder, names[:size]),
                   os.path.join(workdir, f"labels_{size}"), os.path.join(workdir, f"predictions_{size}"))
        runs.append({"images": size, **run, "cpu_ms_per_image": round(1000 * run["cpu_s"] / size, 3)})
    grown = _run(teacher_dir, _list(os.path.join(workdir, "list_grown.txt"), folder, names[:largest + added]),
                 os.path.join(workdir, "labels_grown"), os.path.join(workdir, f"predictions_{largest}"))
    small, large = runs[0], runs[-1]
    marginal = 1000 * (large["cpu_s"] - small["cpu_s"]) / (large["images"] - small["images"])
    growth = 100 * (large["peak_rss_mb"] / small["peak_rss_mb"] - 1)
    return {"cpus": os.cpu_count(), "runs": runs, "peak_growth_pct": round(growth, 1),
            "marginal_cpu_ms_per_image": round(marginal, 3), "goal_peak_growth_pct": GOAL_PEAK_GROWTH_PCT,
            "goal_cpu_ms_per_image": GOAL_CPU_MS_PER_IMAGE,
            "meets_goal": growth <= GOAL_PEAK_GROWTH_PCT and marginal <= GOAL_CPU_MS_PER_IMAGE,
            "rerun": {"images": largest + added, "added": added, **grown}}


def rows(result):
    lines = [(f"labeling job, a list of {run['images']:,} tiny images",
              f"peak RSS {run['peak_rss_mb']:.0f} MB, {run['cpu_s']:.0f} CPU s in {run['wall_s']:.0f} s wall, "
              f"{run['cpu_ms_per_image']:.2f} CPU ms/img") for run in result["runs"]]
    lines.append(("peak RSS growth, largest list over smallest",
                  f"{result['peak_growth_pct']:+.1f}% (goal: within +{result['goal_peak_growth_pct']:.0f}%)"))
    lines.append(("marginal CPU per image", f"{result['marginal_cpu_ms_per_image']:.2f} ms "
                                            f"(goal <= {result['goal_cpu_ms_per_image']:g} ms)"))
    rerun = result["rerun"]
    lines.append((f"rerun over {rerun['images']:,} URIs ({rerun['added']:,} new) into the same index",
                  f"{rerun['wall_s']:.0f} s wall, {rerun['cpu_s']:.0f} CPU s, {rerun['new_units']:,} new units, "
                  f"{rerun['teacher_labeled']:,} images labeled by the teacher, peak RSS "
                  f"{rerun['peak_rss_mb']:.0f} MB"))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--added", type=int, default=2000)
    parser.add_argument("--output", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        result = measure(sizes, args.added, workdir)
    for figure, measured in rows(result):
        print(f"{figure}: {measured}")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

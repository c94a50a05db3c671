"""benchmarks.label_job: the wait4 wrapper's figures and the (d) / (e) summaries, without a labeling run."""

import json
import subprocess
import sys

from benchmarks import label_job


def test_measuring_wrapper_reports_peak_rss_cpu_and_wall_of_its_child():
    burn = ("import time; block = bytearray(64 << 20); end = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass")
    result = subprocess.run([sys.executable, "-c", label_job._MEASURE_CHILD, sys.executable, "-c", burn],
                            capture_output=True, text=True, check=True)
    usage = json.loads(result.stdout)
    assert usage["maxrss_kb"] > 64 * 1024
    assert usage["user_s"] + usage["sys_s"] >= 0.3
    assert usage["wall_s"] >= 0.3


def test_measuring_wrapper_fails_with_the_childs_stderr():
    result = subprocess.run([sys.executable, "-c", label_job._MEASURE_CHILD, sys.executable, "-c",
                             "import sys; sys.stderr.write('x' * 200_000 + 'the end'); sys.exit(3)"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().endswith("the end")


def _run(images, peak_rss_mb, cpu_s, wall_s):
    return {"images": images, "peak_rss_mb": peak_rss_mb, "cpu_s": cpu_s, "user_s": cpu_s - 1, "sys_s": 1.0,
            "wall_s": wall_s, "images_per_s": images / wall_s, "cpu_ms_per_image": 1000 * cpu_s / images,
            "cores_busy": round(cpu_s / wall_s, 2)}


def test_summaries_flatness_marginal_cpu_and_printed_figures():
    runs = [_run(10_000, 1000.0, 40.0, 30.0), _run(50_000, 1050.0, 110.0, 65.0), _run(100_000, 1120.0, 190.0, 100.0)]
    memory, cpu = label_job.memory_summary(runs), label_job.cpu_summary(runs)
    assert memory["peak_growth_pct"] == 12.0 and memory["meets_goal"]
    assert cpu["marginal_cpu_ms_per_image"] == round(1000 * 150 / 90_000, 3)  # 1.667: start-up cancels
    assert cpu["marginal_images_per_s_per_core"] == 600.0 and cpu["meets_goal"]
    assert cpu["cores_busy_at_largest"] == 1.9
    lines = [f"{figure}: {measured}" for figure, measured in label_job.resource_rows(memory, cpu)]
    assert "(d) peak RSS growth, 100k over 10k: +12.0% (goal: within +15%)" in lines
    assert ("(e) labeling pipeline CPU per image (tiny teacher, 24 px PNGs), marginal 10k->100k: "
            "1.67 ms/img = 600 img/s per core (goal <= 2 ms)") in lines
    assert lines[-1].startswith("(e) cores kept busy by a local run at 100k: 1.9 of ")


def test_one_size_has_no_marginal_cost():
    cpu = label_job.cpu_summary([_run(500, 900.0, 10.0, 10.0)])
    assert cpu["marginal_cpu_ms_per_image"] is None and not cpu["meets_goal"]
    assert any("n/a" in measured for _, measured in label_job.resource_rows(label_job.memory_summary(
        [_run(500, 900.0, 10.0, 10.0)]), cpu))

"""Does the labeling job keep an accelerator fed? Measured with a stand-in device.

  python -m benchmarks.stand_in_device [--images=3200] [--batch_size=16] [--device_ms=50]

No accelerator is reachable here, so the teacher runs on the CPU and, with
--stand_in_device_ms, also holds a simulated device for a fixed time per batch, one batch at
a time (teacher/predictor.py): a chip whose own rate is batch_size / device time. A tiny
teacher on tiny PNGs leaves the host far faster than that chip, so the job should label at
the chip's rate; before batches were kept in flight, it labeled at the sum of the host's and
the device's time per batch.

(g) job images/s over the stand-in's own rate. The job's rate is the images labeled over the
span from the first batch sent to the teacher to the last batch back (the PredictShards
counters Label/batch_sent_ms and Label/batch_done_ms): the chip's working time, without the
job's start-up and the teacher's load (which warms its compiled step). Goal: >= 0.95. The
same images without the stand-in give the host's own rate beside it (its time per batch
added to the device's is what a job that took turns would have done).
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402

import models  # noqa: E402
import teacher  # noqa: E402
from benchmarks import label_job  # noqa: E402
from pipeline import label  # noqa: E402

GOAL_JOB_OVER_DEVICE = 0.95


def _teacher_span(results):
    """(images labeled, seconds from the first batch sent to the last batch back) of stage 1."""
    distributions = {d.key.metric.name: d.committed for d in results.predict.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("Label"))["distributions"]}
    counters = {c.key.metric.name: c.committed for c in results.predict.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("Decode"))["counters"]}
    return counters["decoded"], (distributions["batch_done_ms"].max - distributions["batch_sent_ms"].min) / 1000


def _run(teacher_dir, folder, output, batch_size, device_ms):
    results = label.run([f"--teacher={teacher_dir}", f"--input={folder}/*", f"--output={output}",
                         f"--max_batch_size={batch_size}", "--jit_compile=graph", "--min_confidence=0",
                         "--allow_random_teacher", "--progress_every_s=0", "--num_shards=1",
                         "--images_per_prediction_shard=1000000", f"--stand_in_device_ms={device_ms}"])
    images, seconds = _teacher_span(results)
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1)}


def measure(images=3200, batch_size=16, device_ms=50.0, workdir=None):
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        folder = os.path.join(scratch, "images")
        os.makedirs(folder)
        label_job.write_tiny_pngs(folder, images)
        teacher_dir = os.path.join(scratch, "teacher")
        teacher.export(models.create("resnet_rs_tiny", num_classes=10), "resnet_rs_tiny", teacher_dir,
                       random_init=True, source="random-init")
        host = _run(teacher_dir, folder, os.path.join(scratch, "host"), batch_size, 0)
        job = _run(teacher_dir, folder, os.path.join(scratch, "device"), batch_size, device_ms)
    device_rate = batch_size / (device_ms / 1000)
    taking_turns = 1 / (1 / host["images_per_s"] + 1 / device_rate)
    return {"batch_size": batch_size, "device_ms": device_ms, "device_images_per_s": round(device_rate, 1),
            "host_alone": host, "job": job, "taking_turns_images_per_s": round(taking_turns, 1),
            "ratio": round(job["images_per_s"] / device_rate, 3), "goal": GOAL_JOB_OVER_DEVICE}


def rows(result):
    figure = f"(g) job vs stand-in device ({result['device_ms']:g} ms per batch of {result['batch_size']})"
    yield figure, (f"{result['job']['images_per_s']:.1f} vs {result['device_images_per_s']:.1f} img/s "
                   f"= {result['ratio']:.2f}")
    yield ("    host alone; host and device taking turns (estimate)",
           f"{result['host_alone']['images_per_s']:.1f}; {result['taking_turns_images_per_s']:.1f} img/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device_ms", type=float, default=50.0)
    args = parser.parse_args()
    result = measure(args.images, args.batch_size, args.device_ms)
    for figure, measured in rows(result):
        print(f"{figure}: {measured}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""`make bench`: the project's headline figures, measured in one run on this machine.

  python -m benchmarks [--output=out/bench.json] [--label_images=5000]
      [--memory_sizes=10000,50000,100000] [--seconds=15]

(a) labeling job images/s against the bare teacher's predict on the same 5,000 photo crops
    (ratio; goal >= 0.95);
(b) bare forward FLOP/s of resnet_rs_50 at 160 px, float32 and bfloat16;
(c) student training images/s with real input (TFRecords + RandAugment) against the same
    step on synthetic in-memory tensors (ratio);
(d) peak RSS of the labeling job over 10k, 50k and 100k tiny images, and its growth from
    the smallest to the largest (goal: within +15%);
(e) the labeling job's CPU from the same runs: per run, and the marginal CPU ms per image
    between the smallest and largest sizes, start-up excluded (goal <= 2 ms), with the
    cores a local run kept busy;
(f) 2,000 image reads with 64 threads: from local disk, and from gs:// (a GCS emulator on
    loopback) through Beam's FileSystems.open per image (the old path) and through one shared
    storage client (the new one); images/s, CPU ms and requests per image
    (benchmarks/storage_reads.py).
(g) the labeling job's images/s against a stand-in device's own rate (a teacher that also
    holds a simulated chip 50 ms per batch of 16, one batch at a time): whether the host keeps
    an accelerator fed (goal >= 0.95; benchmarks/stand_in_device.py).
(h) the commit's moves of 2,000 staged shards on gs:// (a GCS emulator on loopback), one chunk
    of 100 at a time against pipeline.commit's chunks in flight: on loopback, and with a
    modelled 50 ms wait per request (benchmarks/commit_moves.py).
(i) the student's input pipeline alone (resnet_rs_152 at 256 px, 500x375 JPEG photos): images/s
    a vCPU, projected to a TPU v4-8 / v5e-8 host's vCPUs against what its chips take at peak
    (benchmarks/student_input_rate.py).
How (a), (d) and (e) are measured: benchmarks/label_job.py. Ratios compare two sides
measured in the same run; absolute numbers depend on the machine and on what else runs on
it. Prints a table and writes every number to a JSON file.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import benchmarks  # noqa: E402
import models  # noqa: E402
from benchmarks import (commit_moves, label_job, stand_in_device, storage_reads, student_input_rate,  # noqa: E402
                        student_throughput)
from models import hardware, profiling  # noqa: E402


def forward_flops(model_name, batch_size, seconds):
    """Achieved FLOP/s of the bare forward pass, with XLA and with TF's graph executor.

    The teacher picks the faster of the two on a CPU (models/hardware.py); both are
    reported so the choice can be checked, and `chosen` names the faster one.
    """
    size = models.config(model_name).train_image_size
    flops_per_image = profiling.count_flops(models.create(model_name), size)
    rows = {}
    for precision, policy in (("float32", None), ("bfloat16", "mixed_bfloat16")):
        model = models.create(model_name, dtype_policy=policy)
        rates = {hardware.mode_name(jit): profiling.forward_throughput(model, size, batch_size=batch_size,
                                                                       seconds=seconds, jit_compile=jit)
                 for jit in (True, False)}
        chosen = max(rates, key=rates.get)
        rows[precision] = {"images_per_s": round(rates[chosen], 2),
                           "gflop_per_s": round(rates[chosen] * flops_per_image / 1e9, 1), "chosen": chosen,
                           **{f"{mode}_images_per_s": round(rate, 2) for mode, rate in rates.items()}}
    return {"model": model_name, "image_size": size, "gflops_per_image": round(flops_per_image / 1e9, 3),
            "batch_size": batch_size, **rows}


def _row(figure, measured):
    # The table's two columns, or "figure: measured" where the figure's name is longer.
    return f"{figure:<58}{measured:>30}" if len(figure) < 58 else f"{figure}: {measured}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/bench.json")
    parser.add_argument("--label_model", default="resnet_rs_50")
    parser.add_argument("--label_images", type=int, default=label_job.DEFAULT_IMAGES, help="photo crops for (a)")
    parser.add_argument("--memory_sizes", default=label_job.DEFAULT_MEMORY_SIZES,
                        help="comma-separated tiny-image counts for (d) and (e)")
    parser.add_argument("--seconds", type=float, default=15.0, help="timing budget per measured side")
    args = parser.parse_args()

    cpu = hardware.cpu_info()
    results = {"machine": {"cpus": os.cpu_count(), "cpu_model": cpu["model"], "cpu_generation": cpu["generation"],
                           "isa": cpu["flags"],
                           "accelerator": hardware.has_accelerator()}}
    with tempfile.TemporaryDirectory() as workdir:
        results["labeling_job"] = label_job.throughput(args.label_model, args.label_images, 32,
                                                       os.path.join(workdir, "throughput"))
    results["forward"] = forward_flops("resnet_rs_50", 16, args.seconds)
    results["student"] = student_throughput.measure("resnet_rs_small", 8, 3, args.seconds, "auto")
    results["student_input"] = student_input_rate.measure("resnet_rs_152", 16, 3, [1], args.seconds)
    with tempfile.TemporaryDirectory() as workdir:
        runs = label_job.job_resources(label_job.parse_sizes(args.memory_sizes), workdir)
    results["labeling_memory"] = label_job.memory_summary(runs)
    results["labeling_cpu"] = label_job.cpu_summary(runs)
    results["storage_reads"] = storage_reads.run()
    results["stand_in_device"] = stand_in_device.measure()
    results["commit_moves"] = commit_moves.run()

    job, forward, student = results["labeling_job"], results["forward"], results["student"]
    isa = ", ".join(flag for flag, present in cpu["flags"].items() if present) or "none of " + ", ".join(cpu["flags"])
    print(f"\nmachine: {cpu['model']} ({cpu['generation']}), {os.cpu_count()} CPUs; ISA: {isa}")
    print(f"{'figure':<58}{'measured':>30}")
    for figure, measured in label_job.throughput_rows(args.label_model, job):
        print(_row(figure, measured))
    for precision in ("float32", "bfloat16"):
        row = forward[precision]
        print(f"{'(b) resnet_rs_50 forward at 160 px, ' + precision + ', ' + row['chosen']:<58}"
              f"{row['gflop_per_s']:>9.1f} GFLOP/s ({row['images_per_s']:.1f} img/s)")
        print(f"{'    XLA vs TF graph':<58}{row['xla_images_per_s']:>9.1f} vs {row['graph_images_per_s']:.1f} img/s")
    print(f"{'(c) student training, real input vs synthetic, resnet_rs_small':<58}"
          f"{student['real_images_per_s']:>9.1f} vs {student['synthetic_images_per_s']:.1f} img/s = {student['ratio']:.2f}")
    for figure, measured in student_input_rate.rows(results["student_input"]):
        print(_row(figure, measured))
    for figure, measured in label_job.resource_rows(results["labeling_memory"], results["labeling_cpu"]):
        print(_row(figure, measured))
    for figure, measured in storage_reads.rows(results["storage_reads"]):
        print(_row(figure, measured))
    for figure, measured in stand_in_device.rows(results["stand_in_device"]):
        print(_row(figure, measured))
    for figure, measured in commit_moves.rows(results["commit_moves"]):
        print(_row(figure, measured))
    print()
    benchmarks.write_results(results, args.output)


if __name__ == "__main__":
    main()

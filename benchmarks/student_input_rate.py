"""The student's input pipeline alone: images/s per host thread, and what a TPU host's chips take.

  python -m benchmarks.student_input_rate [--model=resnet_rs_152] [--threads=1,2] [--seconds=20]

On a TPU VM the input pipeline has the host's CPUs to itself, and the question is whether
they prepare images as fast as the chips train on them. This runs the student's own training
input (`InputBuilder.train_dataset`: labeled and pseudo-labeled TFRecords of ImageNet-sized
JPEG photos, 500x375 or 375x500 crops of the photos that ship with scikit-learn and
scikit-image, decoded, Inception-cropped to the model's train size, flipped, RandAugmented,
batched as uint8) with tf.data limited to N threads (a private pool of N threads, intra-op
parallelism 1), nothing else, and counts the process's CPU time: 1,000 / (CPU ms an image)
is the rate of one vCPU.

It then sets that rate against the chips: training costs about 3x the forward pass's FLOPs
(TF's profiler counts the forward pass), so a host whose chips run at their peak bf16 FLOP/s
would take chips x peak / (3 x forward FLOPs) images/s. A host's rate is projected as the
one-vCPU rate x the host's vCPUs (a linear projection, an upper bound: tf.data's scaling to
hundreds of threads, the host's two NUMA nodes and reading from gs:// are not measured here),
and printed as the share of the chips' peak it could feed.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
from benchmarks.label_job import photos  # noqa: E402
from models import hardware, profiling  # noqa: E402
from student import inputs, pseudo, sources  # noqa: E402
from student.config import TrainConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_student_fixtures import write_labeled_tfrecords, write_pseudo_labels  # noqa: E402

NUM_CLASSES = 10
# ImageNet's most common photo size. Its JPEGs average ~110 KB; these photos, smoother than
# most, give ~67 KB at quality 95 (decoding cost follows the pixel count more than the bytes).
PHOTO_SIDES = (500, 375)
JPEG_QUALITY = 95
# TPU VM hosts: chips, peak bf16 TFLOP/s per chip, host vCPUs. Chips and peaks from Cloud TPU's
# v4 and v5e pages, v5e's 224 vCPUs from its VM types (ct5lp-hightpu-8t); v4's 240 vCPUs from
# its system architecture page, not re-checked when this was written.
TPU_HOSTS = {"v4-8": (4, 275, 240), "v5e-8 (v5litepod-8)": (8, 197, 224)}


def photo_jpeg_maker(seed=0):
    """encoded_image(index, label, rng) for the fixture writers: a random crop of a shipped
    photo (half to all of its area), resized to 500x375 or 375x500, JPEG."""
    shipped = photos()
    rng = np.random.default_rng(seed)

    def encoded_image(index, label, unused_rng):
        photo = shipped[index % len(shipped)]
        scale = np.sqrt(rng.uniform(0.5, 1.0))
        height, width = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
        top = rng.integers(0, photo.shape[0] - height + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        size = PHOTO_SIDES if width >= height else PHOTO_SIDES[::-1]
        crop = Image.fromarray(photo[top:top + height, left:left + width, :3]).resize(size, Image.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()

    return encoded_image


def _limited(dataset, threads):
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def rate_and_cpu(dataset, images_per_batch, seconds):
    """(images/s, CPU ms an image): the process's CPU time counts every thread's work, so the
    CPU cost holds whatever threads tf.data actually ran."""
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: tracing, filling the prefetch buffers
        next(iterator)
    batches, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while batches < 3 or time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    images = batches * images_per_batch
    return images / (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start) / images


def measure(model_name, batch_size, pseudo_ratio, thread_counts, seconds):
    model_config = models.config(model_name)
    with tempfile.TemporaryDirectory() as work:
        encoded_image = photo_jpeg_maker()
        labeled_glob = write_labeled_tfrecords(os.path.join(work, "labeled"), NUM_CLASSES, 128, 4,
                                               encoded_image=encoded_image)
        pseudo_glob = write_pseudo_labels(os.path.join(work, "pseudo"), NUM_CLASSES, 384, top_k=5, num_shards=4,
                                          encoded_image=encoded_image)
        photo_bytes = sum(os.path.getsize(os.path.join(work, "pseudo", name))
                          for name in os.listdir(os.path.join(work, "pseudo")) if name.endswith(".tfrecord")) / 384
        config = TrainConfig(model=model_name, labeled=labeled_glob, model_dir=os.path.join(work, "run"),
                             pseudo=pseudo_glob, pseudo_ratio=pseudo_ratio, batch_size=batch_size,
                             num_classes=NUM_CLASSES, labeled_examples=128, train_steps=1_000_000,
                             shuffle_buffer=64, strategy="cpu")
        builder = inputs.InputBuilder(config, sources.open_source(labeled_glob, num_classes=NUM_CLASSES),
                                      pseudo.open_pseudo(pseudo_glob, NUM_CLASSES))
        images_per_batch = batch_size * (1 + pseudo_ratio)
        measured = {threads: rate_and_cpu(_limited(builder.train_dataset(tf.distribute.InputContext()), threads),
                                          images_per_batch, seconds)
                    for threads in thread_counts}
    size = model_config.train_image_size
    train_flops = 3 * profiling.count_flops(models.create(model_name, NUM_CLASSES), size)
    # One vCPU's rate from the CPU an image costs (a measured rate over threads would also count
    # a second thread that shares a core, or waits).
    cpu_ms = min(cost for _, cost in measured.values())
    one_thread = 1000 / cpu_ms
    hosts = {}
    for host, (chips, peak_tflops, vcpus) in TPU_HOSTS.items():
        demand = chips * peak_tflops * 1e12 / train_flops
        hosts[host] = {"chips": chips, "host_vcpus": vcpus, "images_per_s_at_chip_peak": round(demand),
                       "projected_host_images_per_s": round(one_thread * vcpus),
                       "share_of_chip_peak_fed": round(one_thread * vcpus / demand, 2)}
    return {"model": model_name, "image_size": size, "randaugment": [model_config.randaugment_layers,
                                                                      model_config.randaugment_magnitude],
            "source_photo": "x".join(map(str, PHOTO_SIDES)), "mean_record_kb": round(photo_bytes / 1024, 1),
            "images_per_batch": images_per_batch, "train_gflops_per_image": round(train_flops / 1e9, 2),
            "images_per_s_by_threads": {str(threads): round(rate, 1) for threads, (rate, _) in measured.items()},
            "cpu_ms_per_image_by_threads": {str(threads): round(cost, 2) for threads, (_, cost) in measured.items()},
            "images_per_s_per_vcpu": round(one_thread, 1), "tpu_hosts": hosts,
            "cpu_model": hardware.cpu_info()["model"], "cpu_count": os.cpu_count()}


def rows(result):
    """(figure, measured) rows for `make bench`'s table."""
    per_vcpu = f"{result['images_per_s_per_vcpu']:.1f} img/s a vCPU"
    yield (f"(i) student input alone, {result['model']} at {result['image_size']} px, 500x375 JPEGs",
           f"{per_vcpu} ({1000 / result['images_per_s_per_vcpu']:.2f} CPU ms/img)")
    for host, row in result["tpu_hosts"].items():
        yield (f"    {host} host ({row['host_vcpus']} vCPUs) vs its chips at peak",
               f"{row['projected_host_images_per_s']:,} vs {row['images_per_s_at_chip_peak']:,} img/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_rs_152", choices=sorted(models.CONFIGS))
    parser.add_argument("--batch_size", type=int, default=16, help="labeled images per batch")
    parser.add_argument("--pseudo_ratio", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated tf.data thread counts to measure")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per thread count")
    args = parser.parse_args()
    thread_counts = sorted({int(value) for value in args.threads.split(",")})
    if not thread_counts or thread_counts[0] < 1:
        parser.error(f"--threads={args.threads}: give positive thread counts, e.g. 1,2")
    result = measure(args.model, args.batch_size, args.pseudo_ratio, thread_counts, args.seconds)
    print(f"{result['model']} training input at {result['image_size']} px (RandAugment "
          f"{result['randaugment'][0]} ops, magnitude {result['randaugment'][1]}), {result['source_photo']} JPEG "
          f"photos (~{result['mean_record_kb']} KB a record), on {result['cpu_count']} x {result['cpu_model']}:")
    for threads, rate in result["images_per_s_by_threads"].items():
        print(f"  {threads} tf.data thread(s): {rate:.1f} images/s, "
              f"{result['cpu_ms_per_image_by_threads'][threads]:.2f} CPU ms an image")
    print(f"  training: {result['train_gflops_per_image']} GFLOPs an image (3 x forward)")
    for host, row in result["tpu_hosts"].items():
        print(f"  {host}: the chips at peak take {row['images_per_s_at_chip_peak']:,} images/s; "
              f"{row['host_vcpus']} vCPUs x {result['images_per_s_per_vcpu']} = "
              f"{row['projected_host_images_per_s']:,} images/s at most, {row['share_of_chip_peak_fed']:.0%} "
              "of that peak")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""benchmarks.student_input_rate on a tiny model: the photos it writes, and its projection's arithmetic."""

import numpy as np
import pytest
import tensorflow as tf

import models
from benchmarks import student_input_rate
from models import profiling


def test_photo_records_are_imagenet_sized_jpegs_of_varied_content():
    make = student_input_rate.photo_jpeg_maker(seed=0)
    images = [tf.io.decode_jpeg(make(index, 0, None)).numpy() for index in range(8)]
    assert {image.shape for image in images} <= {(375, 500, 3), (500, 375, 3)}
    # Crops of several photos, not one image repeated.
    assert len({image.tobytes() for image in images}) == 8
    assert all(20 < image.mean() < 235 for image in images)


def test_projection_is_the_measured_cpu_cost_times_host_vcpus_against_the_chips_flops():
    result = student_input_rate.measure("resnet_rs_tiny", batch_size=4, pseudo_ratio=1, thread_counts=[1],
                                        seconds=1.0)
    assert result["image_size"] == 32 and result["images_per_batch"] == 8
    cpu_ms = result["cpu_ms_per_image_by_threads"]["1"]
    assert cpu_ms > 0 and result["images_per_s_by_threads"]["1"] > 0
    assert result["images_per_s_per_vcpu"] == pytest.approx(1000 / cpu_ms, rel=0.01)
    train_flops = 3 * profiling.count_flops(models.create("resnet_rs_tiny", student_input_rate.NUM_CLASSES), 32)
    assert result["train_gflops_per_image"] == pytest.approx(train_flops / 1e9, abs=0.01)
    for host, (chips, peak_tflops, vcpus) in student_input_rate.TPU_HOSTS.items():
        row = result["tpu_hosts"][host]
        demand = chips * peak_tflops * 1e12 / train_flops
        assert row["images_per_s_at_chip_peak"] == pytest.approx(demand, rel=0.001)
        assert row["projected_host_images_per_s"] == pytest.approx(result["images_per_s_per_vcpu"] * vcpus, rel=0.01)
        assert row["share_of_chip_peak_fed"] == pytest.approx(row["projected_host_images_per_s"] / demand, abs=0.01)
    figures = dict(student_input_rate.rows(result))
    assert any("resnet_rs_tiny at 32 px" in figure for figure in figures)
    assert np.isfinite(result["mean_record_kb"]) and result["mean_record_kb"] > 10

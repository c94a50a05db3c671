"""benchmarks.stand_in_device on a few images: its figures are measured from the job's own counters."""

from benchmarks import stand_in_device


def test_stand_in_bench_reports_the_teacher_span_of_both_runs(tmp_path):
    result = stand_in_device.measure(images=96, batch_size=8, device_ms=20, workdir=tmp_path)
    assert result["device_images_per_s"] == 400.0
    for run in ("host_alone", "job"):
        assert result[run]["images"] == 96 and result[run]["seconds"] > 0
    # 12 batches hold the stand-in 20 ms each, one at a time: the span cannot be shorter.
    assert result["job"]["seconds"] >= 12 * 0.020 * 0.99
    assert 0 < result["ratio"] <= 1.01
    figure, measured = next(stand_in_device.rows(result))
    assert "20 ms per batch of 8" in figure and measured.endswith(f"= {result['ratio']:.2f}")

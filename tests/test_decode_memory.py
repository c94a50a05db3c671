"""pipeline.decode's per-worker memory budget: estimates that hold, waits, refusals, Beam sharing."""

import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import png_header_claiming
from pipeline import decode

# Measured in a fresh process so the peak (ru_maxrss) belongs to this one decode. A warm-up
# decode of the same format first, so TF's and Pillow's one-time set-up is not counted.
_MEASURE = r"""
import sys
from pathlib import Path
from pipeline import decode

def status(field):  # kB
    return int(next(line for line in open("/proc/self/status") if line.startswith(field + ":")).split()[1])

decode.decode(Path(sys.argv[2]).read_bytes(), 10**9)
data = Path(sys.argv[1]).read_bytes()
opened = decode._open_checked(data, 10**9)
estimate = decode.decode_peak_bytes(opened)
del opened
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
decode.decode(data, 10**9)
print((status("VmHWM") - before) * 1024, estimate)
"""


def _noise(mode, side, seed=0):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (side, side)).astype(np.uint16))
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), "RGB").convert(mode)


@pytest.mark.parametrize("mode,image_format", [("RGB", "PNG"), ("RGB", "JPEG"), ("RGB", "WEBP"), ("RGBA", "PNG"),
                                               ("P", "PNG"), ("L", "PNG"), ("I;16", "PNG")])
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak RSS through Linux's /proc")
def test_estimate_covers_the_measured_peak(tmp_path, mode, image_format):
    # Noise is the worst case for the re-encoded copy; 3000x3000 makes the estimate hundreds of
    # MB, so allocator noise is small. The image is written here and decoded in a fresh process
    # (after a warm-up decode of a small one of the same format, and with the peak RSS reset
    # through /proc/self/clear_refs), so the peak is this decode's alone.
    big, small = tmp_path / f"big.{image_format}", tmp_path / f"small.{image_format}"
    _noise(mode, 3000).save(big, format=image_format)
    _noise(mode, 64).save(small, format=image_format)
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(big), str(small)],
                            capture_output=True, text=True, check=True)
    peak, estimate = map(int, result.stdout.split()[-2:])
    assert peak > 0
    assert peak <= estimate, f"{mode} {image_format}: measured {peak / 9e6:.1f} B/px > estimate {estimate / 9e6:.1f}"


def test_sixteen_bit_scaling_matches_rounding_in_floating_point():
    # The integer form of round(v * 255 / 65535) used to save memory, checked on every value.
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    pixels, _, _ = decode.decode(buffer.getvalue(), 10**7)
    expected = np.round(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)


def test_an_image_that_alone_exceeds_the_budget_is_refused_before_decoding():
    memory = decode.DecodeMemory(100 << 20)
    bomb = png_header_claiming(4000, 4000)  # 16 M pixels x 24 B: 384 MB, though its data is tiny
    with pytest.raises(decode.ImageRejected, match=r"too_much_memory: decoding 4000x4000 RGB needs about 366 MB "
                                                    r"> --decode_memory_mb=100"):
        decode.decode(bomb, 10**9, memory=memory)
    assert memory.in_use == 0 and memory.peak_in_use == 0


def test_decodes_wait_until_their_reservation_fits():
    memory = decode.DecodeMemory(1000)
    order, second = [], memory.reserve(600, "second")
    with memory.reserve(700, "first"):
        waiter = threading.Thread(target=lambda: (second.__enter__(), order.append("second")))
        waiter.start()
        time.sleep(0.3)
        assert order == [] and memory.in_use == 700  # 700 + 600 > 1000: the second waits
        order.append("first released")
    waiter.join(timeout=5)
    assert order == ["first released", "second"] and memory.in_use == 600
    second.__exit__(None, None, None)
    assert memory.in_use == 0 and memory.peak_in_use == 700


def test_threads_decoding_together_never_exceed_the_budget():
    side = 300
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    one = side * side * 24
    memory = decode.DecodeMemory(2 * one + one // 2)  # room for two at a time, not three
    errors = []

    def work():
        try:
            for _ in range(4):
                decode.decode(data, 10**7, memory=memory)
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert memory.in_use == 0
    assert memory.peak_in_use <= memory.limit_bytes
    assert memory.peak_in_use == 2 * one  # the threads did overlap, up to the budget


def test_the_labeling_job_rejects_what_exceeds_the_flag_and_keeps_the_rest(tiny_teacher, tmp_path):
    from pipeline import label

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "small.png")
    (folder / "bomb.png").write_bytes(png_header_claiming(5000, 5000))
    label.run([f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={tmp_path / 'out'}",
               "--decode_memory_mb=64", "--min_confidence=0", "--allow_random_teacher"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 1 and manifest["rejected_by_reason"] == {"too_much_memory": 1}

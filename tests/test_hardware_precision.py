"""models/hardware.py's precision warning: each precision on each device kind, decided without the device."""

import pytest

from models import hardware

NO_BF16 = {"model": "AMD EPYC 7B13", "flags": dict.fromkeys(hardware.ISA_FLAGS, False)}
AVX512_BF16 = {"model": "AMD EPYC 9B14", "flags": {**NO_BF16["flags"], "avx512f": True, "avx512_bf16": True}}
AMX = {"model": "Intel Xeon Platinum 8481C", "flags": {**NO_BF16["flags"], "amx_bf16": True, "amx_tile": True}}
# Compute capabilities: V100 7.0, T4 7.5, A100 8.0, L4 8.9, H100 9.0; a P100 6.0 and a P4 6.1.
GPUS = {"P4": (6, 1), "V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "L4": (8, 9), "H100": (9, 0)}


@pytest.mark.parametrize("device_kind, detail", [("CPU", NO_BF16), ("GPU", GPUS["P4"]), ("TPU", None)])
def test_float32_is_never_warned_about(device_kind, detail):
    cpu, capability = (detail, None) if device_kind == "CPU" else (None, detail)
    assert hardware.precision_warning("float32", device_kind, capability, cpu) is None


@pytest.mark.parametrize("gpu, bfloat16_is_native", [("P4", False), ("V100", False), ("T4", False), ("A100", True),
                                                     ("L4", True), ("H100", True)])
def test_bfloat16_on_a_gpu_needs_compute_capability_8(gpu, bfloat16_is_native):
    warning = hardware.precision_warning("bfloat16", "GPU", GPUS[gpu])
    if bfloat16_is_native:
        assert warning is None
    else:
        found = ".".join(map(str, GPUS[gpu]))
        assert warning.startswith(f"--precision=bfloat16 on a GPU of compute capability {found}: bfloat16 units "
                                  "start at 8.0"), warning
        assert "use --precision=float16" in warning


@pytest.mark.parametrize("gpu", ["V100", "T4", "A100", "L4", "H100"])
def test_float16_is_fine_on_gpus_from_compute_capability_7(gpu):
    assert hardware.precision_warning("float16", "GPU", GPUS[gpu]) is None


def test_float16_on_an_older_gpu_warns():
    warning = hardware.precision_warning("float16", "GPU", GPUS["P4"])
    assert warning.startswith("--precision=float16 on a GPU of compute capability 6.1: float16 tensor cores start "
                              "at 7.0"), warning


def test_a_gpu_of_unknown_capability_is_not_warned_about():
    for precision in hardware.PRECISIONS:
        assert hardware.precision_warning(precision, "GPU", None) is None


def test_tpus_compute_bfloat16_and_have_no_float16():
    assert hardware.precision_warning("bfloat16", "TPU") is None
    warning = hardware.precision_warning("float16", "TPU")
    assert warning.startswith("--precision=float16 on a TPU: TPUs have no float16 units") and \
        "use --precision=bfloat16" in warning


@pytest.mark.parametrize("cpu, emulated", [(NO_BF16, True), (AVX512_BF16, False), (AMX, False)])
def test_bfloat16_on_a_cpu_needs_avx512_bf16_or_amx(cpu, emulated):
    warning = hardware.precision_warning("bfloat16", "CPU", cpu=cpu)
    if emulated:
        assert warning == ("--precision=bfloat16 on a CPU without bfloat16 units (AMD EPYC 7B13: no avx512_bf16, "
                           "no amx_bf16) is emulated and gives no speed-up; float32 is as fast and more exact.")
    else:
        assert warning is None


@pytest.mark.parametrize("cpu", [NO_BF16, AVX512_BF16, AMX])
def test_float16_on_any_cpu_warns(cpu):
    warning = hardware.precision_warning("float16", "CPU", cpu=cpu)
    assert warning.startswith(f"--precision=float16 on a CPU ({cpu['model']}) is emulated"), warning


def test_unknown_precision_or_device_is_named():
    with pytest.raises(ValueError, match=r"precision='float8': expected one of \('float32', 'bfloat16', 'float16'\)"):
        hardware.precision_warning("float8", "CPU", cpu=NO_BF16)
    with pytest.raises(ValueError, match=r"device_kind='NPU': expected one of \('CPU', 'GPU', 'TPU'\)"):
        hardware.precision_warning("float16", "NPU")


def test_this_machine_is_a_cpu_or_a_gpu_of_known_capability():
    device_kind, capability = hardware.strategy_device()
    assert (device_kind, capability) == ("CPU", None) or (device_kind == "GPU" and capability >= (3, 0))

"""What this machine is, whether a precision is fast on the device that computes with it, and
which TF compile mode runs a model fastest on it.

Machines of one kind differ (Intel CPUs with AVX-512/AMX, AMD EPYC with AVX2 only or with
AVX-512 BF16), and which of XLA:CPU or TF's graph executor (oneDNN kernels) is faster
differs with them. Measured with resnet_rs_50 at 160 px, batch 16, forward only:

  CPU                                   float32 XLA / graph   bfloat16 XLA / graph (img/s)
  Intel, AVX-512 + AMX (2 cores)        53 / 47 (batch 32)    44 / 63
  AMD EPYC Zen 3, AVX2 (2 cores)        19.7 / 21.9-23.5      18.2 / 17.9
  AMD EPYC Zen 4, AVX-512 BF16 (2 cores) 35.7 / 37.5          33.5 / 50.5

No rule over CPU flags predicts the float32 column, so on a CPU the choice is measured
(`choose_jit_compile`): both modes run the caller's real function on its real shapes, and
the faster wins. With a GPU or TPU the choice is XLA without measuring.
"""

import logging
import platform
import time

import tensorflow as tf

log = logging.getLogger(__name__)

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PRECISIONS = ("float32", "bfloat16", "float16")
DEVICE_KINDS = ("CPU", "GPU", "TPU")
JIT_CHOICES = ("auto", "xla", "graph")


def cpu_info():
    """{"model": CPU model name, "generation": "family F model M", "flags": {flag: bool for
    ISA_FLAGS}} from /proc/cpuinfo (Linux). The name alone can hide the generation on cloud
    VMs ("AMD EPYC" for a Zen 3 and a Zen 4); the family and model numbers do not."""
    model, flags, numbers = platform.processor() or platform.machine(), set(), {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("cpu family", "model"):
                    numbers.setdefault(key, value.strip())
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass  # not Linux: flags unknown, reported as absent
    generation = f"family {numbers['cpu family']} model {numbers['model']}" if len(numbers) == 2 else "unknown"
    return {"model": model, "generation": generation, "flags": {flag: flag in flags for flag in ISA_FLAGS}}


def has_accelerator():
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def precision_warning(precision, device_kind, compute_capability=None, cpu=None):
    """Why `precision` is slow on the device that computes with it, or None when it is not.

    `device_kind`: "CPU", "GPU" or "TPU". `compute_capability`: (major, minor) of the GPU
    (None: unknown, no warning). `cpu`: `cpu_info()` of the CPU. Pure, so every case is
    tested without the device: bfloat16 units start at compute capability 8.0 (A100, L4,
    H100; a T4 is 7.5, a V100 7.0) and float16 tensor cores at 7.0; TPUs compute in
    bfloat16 and have no float16 units; a CPU has bfloat16 units only with AVX512-BF16 or
    AMX, and TensorFlow runs float16 on a CPU through float32 conversions.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}.")
    if device_kind not in DEVICE_KINDS:
        raise ValueError(f"device_kind={device_kind!r}: expected one of {DEVICE_KINDS}.")
    if precision == "float32":
        return None
    if device_kind == "TPU":
        return None if precision == "bfloat16" else (
            "--precision=float16 on a TPU: TPUs have no float16 units (it is emulated); use --precision=bfloat16, "
            "which TPUs compute natively.")
    if device_kind == "GPU":
        if compute_capability is None:
            return None
        needed = (8, 0) if precision == "bfloat16" else (7, 0)
        if tuple(compute_capability) >= needed:
            return None
        found = ".".join(str(part) for part in compute_capability)
        if precision == "bfloat16":
            return (f"--precision=bfloat16 on a GPU of compute capability {found}: bfloat16 units start at 8.0 "
                    "(A100, L4, H100), so it is emulated and slower than float32; use --precision=float16 "
                    "(T4, V100) or float32.")
        return (f"--precision=float16 on a GPU of compute capability {found}: float16 tensor cores start at 7.0 "
                "(V100, T4), so it gives no speed-up; float32 is as fast and more exact.")
    cpu = cpu or {"model": "a CPU", "flags": {}}
    if precision == "float16":
        return (f"--precision=float16 on a CPU ({cpu['model']}) is emulated through float32 and slower than "
                "float32; use float32 (float16 is for GPUs).")
    flags = cpu["flags"]
    if flags.get("avx512_bf16") or flags.get("amx_bf16"):
        return None
    return (f"--precision=bfloat16 on a CPU without bfloat16 units ({cpu['model']}: no avx512_bf16, no amx_bf16) "
            "is emulated and gives no speed-up; float32 is as fast and more exact.")


def strategy_device(strategy=None):
    """(device kind, compute capability or None) of the devices that run `strategy`'s replicas
    (default: the current strategy). With GPUs of several kinds, the lowest capability."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU", None
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy places ops on the first GPU when there is one
        devices = [device.name for device in tf.config.list_logical_devices("GPU")[:1]] or ["CPU"]
    if not any("GPU" in device.upper() for device in devices):
        return "CPU", None
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                    for gpu in tf.config.list_physical_devices("GPU")]
    known = [capability for capability in capabilities if capability]
    return "GPU", min(known) if known else None


def warn_if_precision_is_slow(precision, who, strategy=None):
    """Logs `precision_warning` for the device that runs `strategy` (default: the current one)."""
    device_kind, compute_capability = strategy_device(strategy)
    warning = precision_warning(precision, device_kind, compute_capability,
                                cpu_info() if device_kind == "CPU" else None)
    if warning:
        log.warning("%s: %s", who, warning)



def parse_jit_compile(value):
    """'auto'/None -> None; 'xla'/True -> True; 'graph'/False -> False. Raises ValueError."""
    if value is None or isinstance(value, bool):
        return value
    if value not in JIT_CHOICES:
        raise ValueError(f"jit_compile={value!r}: expected one of {JIT_CHOICES}.")
    return {"auto": None, "xla": True, "graph": False}[value]


def mode_name(jit_compile):
    return "xla" if jit_compile else "graph"


def _run_once(function, args):
    start = time.perf_counter()
    outputs = function(*args)
    for tensor in tf.nest.flatten(outputs):
        tensor.numpy()  # waits for the result
    return time.perf_counter() - start


def choose_jit_compile(python_function, args, rounds=2, label="model"):
    """True (XLA) or False (graph), whichever runs `python_function(*args)` faster here.

    Each mode is traced and compiled once, then the two are timed alternately `rounds`
    times; the fastest call of each is compared, so a burst of other work on the machine
    during one call does not decide. Returns (jit_compile, the chosen tf.function, already
    traced for `args`, {mode: seconds per call}).
    """
    functions = {True: tf.function(python_function, jit_compile=True),
                 False: tf.function(python_function, jit_compile=False)}
    for function in functions.values():
        _run_once(function, args)  # trace and compile
    best = {mode: float("inf") for mode in functions}
    for _ in range(rounds):
        for mode, function in functions.items():
            best[mode] = min(best[mode], _run_once(function, args))
    chosen = best[True] < best[False]
    seconds = {mode_name(mode): round(value, 4) for mode, value in best.items()}
    log.info("%s: compile mode %s on %s (measured s per call: %s)", label, mode_name(chosen),
             cpu_info()["model"], seconds)
    return chosen, functions[chosen], seconds

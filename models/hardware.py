"""What this machine is, and which TF compile mode runs a model fastest on it.

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
JIT_CHOICES = ("auto", "xla", "graph")


def cpu_info():
    """{"model": CPU model name, "flags": {flag: bool for ISA_FLAGS}} from /proc/cpuinfo (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass  # not Linux: flags unknown, reported as absent
    return {"model": model, "flags": {flag: flag in flags for flag in ISA_FLAGS}}


def has_accelerator():
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def has_bfloat16_units():
    """Whether bfloat16 math has hardware support here (an accelerator, AVX512-BF16 or AMX)."""
    flags = cpu_info()["flags"]
    return has_accelerator() or flags["avx512_bf16"] or flags["amx_bf16"]


def warn_if_bfloat16_is_emulated(precision, who):
    if precision == "bfloat16" and not has_bfloat16_units():
        log.warning("%s: --precision=bfloat16 on a CPU without bfloat16 units (%s: no avx512_bf16, no amx_bf16) "
                    "is emulated and gives no speed-up; float32 is as fast and more exact.", who, cpu_info()["model"])


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

"""Teacher.predict throughput against a bare `model(x)` call on the same batch.

  python -m benchmarks.teacher_predict [--model=resnet_rs_50] [--batch_size=32] [--seconds=10]

Both sides see the same images: predict gets uint8 pixels at the eval size and does the
shared eval transform, the compiled forward pass and the soft-label summary; the bare
side gets the already-normalised float batch and calls the Keras model directly. A third
column runs the same forward compiled as predict compiles it, so predict / compiled is
the cost of preprocessing, padding and the soft-label summary alone.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
import teacher  # noqa: E402
from models import preprocessing  # noqa: E402


def images_per_second(fn, batch_size, seconds):
    fn()
    fn()  # warm-up: tracing and compilation are not counted
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * batch_size / (time.perf_counter() - start)


def measure(model_name, batch_size, seconds):
    cfg = models.config(model_name)
    size = cfg.eval_image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    inputs = preprocessing.eval_transform(pixels, cfg)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        teacher.export(models.create(model_name), model_name, directory, random_init=True, source="random-init")
        for precision in ("float32", "bfloat16"):
            loaded = teacher.load(directory, batch_size=batch_size, precision=precision)
            compiled_forward = tf.function(lambda x, m=loaded.model: m(x, training=False),
                                           jit_compile=loaded.compile_mode == "xla")
            bare = images_per_second(lambda: loaded.model(inputs, training=False).numpy(), batch_size, seconds)
            compiled = images_per_second(lambda: compiled_forward(inputs).numpy(), batch_size, seconds)
            served = images_per_second(lambda: loaded.predict(pixels), batch_size, seconds)
            results[precision] = {"bare_images_per_s": round(bare, 2), "compiled_images_per_s": round(compiled, 2),
                                  "predict_images_per_s": round(served, 2), "ratio": round(served / bare, 3),
                                  "ratio_to_compiled": round(served / compiled, 3)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_rs_50")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = measure(args.model, args.batch_size, args.seconds)
    for precision, row in results.items():
        print(f"{args.model} {precision:<9} bare model(x) {row['bare_images_per_s']:6.1f} img/s  "
              f"compiled {row['compiled_images_per_s']:6.1f}  Teacher.predict {row['predict_images_per_s']:6.1f}  "
              f"predict/bare {row['ratio']:.2f}  predict/compiled {row['ratio_to_compiled']:.2f}")
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, **results}))


if __name__ == "__main__":
    main()

"""`make demo`: the largest real piece of the project that exists, on embedded defaults.

Builds resnet_rs_50 as the paper sizes it, reports its parameters and FLOPs, runs the
shared eval transform on real photos that ship with scikit-image, and runs the forward
pass in float32 and bfloat16 (XLA-compiled), with measured throughput. No weights can be
downloaded here, so the model is randomly initialised and its class indices mean nothing
yet; the numbers that matter are shapes, costs, and fp32/bf16 agreement.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from models import preprocessing, profiling  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")


def load_photos():
    """Real photos bundled with scikit-image, as (name, uint8 RGB array)."""
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:  # grayscale photo ("camera"): the model expects RGB
            image = np.stack([image] * 3, axis=-1)
        yield name, image[..., :3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_rs_50", choices=sorted(models.CONFIGS))
    parser.add_argument("--seconds", type=float, default=8.0, help="timing budget per precision")
    args = parser.parse_args()

    cfg = models.config(args.model)
    size = cfg.eval_image_size
    print(f"== {cfg.name}: blocks {cfg.block_counts}, image {size}px, dropout {cfg.dropout_rate}, "
          f"stochastic depth {cfg.stochastic_depth_rate}, RandAugment 2x{cfg.randaugment_magnitude}")
    start = time.perf_counter()
    fp32 = models.create(args.model)
    bf16 = models.create(args.model, dtype_policy="mixed_bfloat16")
    bf16.set_weights(fp32.get_weights())
    print(f"built in {time.perf_counter() - start:.1f}s: {fp32.count_params():,} parameters, "
          f"{profiling.count_flops(fp32, size) / 1e9:.2f} GFLOPs per image at {size}px")

    names, photos = zip(*load_photos())
    batch = tf.stack([preprocessing.eval_transform(photo, cfg) for photo in photos])
    forward = {
        "float32": tf.function(lambda x: fp32(x, training=False), jit_compile=True),
        "bfloat16": tf.function(lambda x: bf16(x, training=False), jit_compile=True),
    }
    probabilities = {k: tf.nn.softmax(f(batch)).numpy() for k, f in forward.items()}
    print(f"\n{'photo':<22}{'size':>10}  top-3 classes fp32 (prob)             bf16 top-1")
    for i, (name, photo) in enumerate(zip(names, photos)):
        top = np.argsort(-probabilities["float32"][i])[:3]
        shown = ", ".join(f"{c:>3} ({probabilities['float32'][i, c]:.4f})" for c in top)
        same = "same" if np.argmax(probabilities["bfloat16"][i]) == top[0] else "differs"
        print(f"{name:<22}{photo.shape[0]:>4}x{photo.shape[1]:<5}  {shown}   {same}")
    gap = np.abs(probabilities["float32"] - probabilities["bfloat16"]).max()
    print(f"max |p_fp32 - p_bf16| = {gap:.2e} (random init: near-uniform over 1000 classes)")

    print(f"\nforward throughput, batch 16, {size}px, XLA:")
    for precision, model in (("float32", fp32), ("bfloat16", bf16)):
        rate = profiling.forward_throughput(model, size, batch_size=16, seconds=args.seconds)
        print(f"  {precision:<9} {rate:7.1f} images/s")


if __name__ == "__main__":
    main()

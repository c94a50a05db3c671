"""Bytes a soft target costs per image, top k against the full distribution, through the
project's own serializers.

  python -m benchmarks.soft_target_bytes [--classes=1000] [--top_k=5] [--uri_chars=49]
      [--output=out/soft_target_bytes.json]

For one prediction of `--classes` classes (logits drawn N(0, 3), seed 0), the bytes of its
stage 1 index entry (index.prediction_entry), of its packed stage 2 element (elements.pack:
what the selection's shuffles carry) and of its train record besides the image
(records.to_example), when the job stores the top k and when it also stores the full
distribution (--full_distribution, float32); and what a float16 copy of the distribution,
one bytes feature, would add instead, with its largest error on a probability. The student's
default target from the top k (its tail spread evenly, student/pseudo.py) needs no more bytes
than the top k: the tail's mass is 1 minus their sum.
"""

import argparse
import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import benchmarks  # noqa: E402
from pipeline import elements, index, records  # noqa: E402
from pipeline.elements import Prediction  # noqa: E402

IMAGE_BYTES = 110_000  # a mean ImageNet JPEG; only subtracted back out


def _prediction(probabilities, top_k, uri, full):
    order = np.argsort(-probabilities)[:top_k]
    entropy = float(-(probabilities * np.log(probabilities)).sum())
    return Prediction(hashlib.sha256(uri.encode()).hexdigest(), uri, -1, IMAGE_BYTES,
                      tuple(int(i) for i in order), tuple(float(p) for p in probabilities[order]),
                      float(probabilities.max()), entropy, probabilities.astype(np.float32) if full else None)


def _sizes(prediction):
    image = bytes(IMAGE_BYTES)
    return {"index_entry": len(index.prediction_entry(prediction)),
            "packed_element": len(elements.pack(prediction, 1)),
            "record_besides_image": len(records.to_example(prediction, image, 0)) - IMAGE_BYTES}


def measure(classes=1000, top_k=5, uri_chars=49):
    logits = np.random.default_rng(0).normal(0, 3, classes)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    uri = ("gs://bucket/unlabeled/" + "0123456789abcdef" * 8)[:uri_chars]
    half = probabilities.astype("<f2")
    float16_feature = tf.train.Features(feature={"label/distribution": records.bytes_feature([half.tobytes()])})
    top = np.sort(probabilities)[::-1][:top_k]
    return {"classes": classes, "top_k": top_k, "uri_chars": uri_chars,
            "top_k_only": _sizes(_prediction(probabilities, top_k, uri, full=False)),
            "full_float32": _sizes(_prediction(probabilities, top_k, uri, full=True)),
            "full_float16_bytes_feature_adds": float16_feature.ByteSize(),
            "float16_max_error": float(np.abs(half.astype(np.float64) - probabilities).max()),
            "top_k_mass": float(top.sum())}


def rows(result):
    top, full = result["top_k_only"], result["full_float32"]
    yield (f"top {result['top_k']} of {result['classes']} classes (default): index entry / packed / record",
           f"{top['index_entry']:,} / {top['packed_element']:,} / {top['record_besides_image']:,} B")
    yield ("full distribution, float32 (--full_distribution)",
           f"{full['index_entry']:,} / {full['packed_element']:,} / {full['record_besides_image']:,} B")
    yield ("full distribution as one float16 bytes feature would add",
           f"+{result['full_float16_bytes_feature_adds']:,} B each (max error {result['float16_max_error']:.1e})")
    yield ("the top k's mass in this draw (the uniform tail gets the rest)", f"{result['top_k_mass']:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--uri_chars", type=int, default=49)
    parser.add_argument("--output", default="out/soft_target_bytes.json")
    args = parser.parse_args()
    if not 1 <= args.top_k <= args.classes:
        parser.error(f"--top_k={args.top_k} must be between 1 and --classes={args.classes}")
    result = measure(args.classes, args.top_k, args.uri_chars)
    for figure, measured in rows(result):
        print(f"{figure:<72}{measured}")
    benchmarks.write_results(result, args.output)


if __name__ == "__main__":
    main()

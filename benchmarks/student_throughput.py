"""Student training throughput: real input (TFRecords + RandAugment) against in-memory tensors.

  python -m benchmarks.student_throughput [--model=resnet_rs_small] [--batch_size=8]
      [--pseudo_ratio=3] [--seconds=20] [--jit_compile=auto|xla|graph]

Both sides run the same Trainer step on mixed batches of the same shapes (batch_size
labeled + pseudo_ratio * batch_size pseudo images). The real side reads labeled and
pseudo-labeled TFRecords (JPEG, written here in the labeling job's format), decodes,
crops, flips and RandAugments every image; the synthetic side repeats one already
prepared batch from memory (the real side's first, so also uint8 pixels that the step
normalises: both sides feed the device the same bytes). real / synthetic below 1 is the share of step time the
input pipeline fails to hide: the input is the bottleneck.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from student import inputs, pseudo, sources  # noqa: E402
from student import trainer as trainer_lib  # noqa: E402
from student.config import TrainConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_student_fixtures import write_labeled_tfrecords, write_pseudo_labels  # noqa: E402

NUM_CLASSES = 10
ROUNDS = 5


def images_per_second(trainer, iterator, images_per_step, seconds, steps_per_call=2):
    steps, elapsed = 0, 0.0
    while steps < 3 * steps_per_call or elapsed < seconds:
        elapsed += trainer.train_block(iterator, steps_per_call)[2]
        steps += steps_per_call
    return steps * images_per_step / elapsed


def alternate(trainer, iterators, images_per_step, seconds, rounds=ROUNDS):
    """Median images/s of each iterator, measured in alternating rounds.

    On a shared machine the load changes over a run; alternating short rounds exposes both
    sides to the same load, and the median drops a round that was disturbed.
    """
    for iterator in iterators:  # warm-up: tracing, compilation, filling buffers
        trainer.train_block(iterator, 2)
        trainer.train_block(iterator, 2)
    samples = [[] for _ in iterators]
    for _ in range(rounds):
        for iterator, side in zip(iterators, samples):
            side.append(images_per_second(trainer, iterator, images_per_step, seconds / rounds))
    return [statistics.median(side) for side in samples]


def measure(model_name, batch_size, pseudo_ratio, seconds, jit_compile, randaugment_layers=None):
    size = models.config(model_name).train_image_size
    with tempfile.TemporaryDirectory() as work:
        # Source images 1.5x the train size, as ImageNet photos are larger than the crop.
        image_size = int(size * 1.5)
        labeled_glob = write_labeled_tfrecords(os.path.join(work, "labeled"), NUM_CLASSES, 256, 4,
                                               image_size=image_size)
        pseudo_glob = write_pseudo_labels(os.path.join(work, "pseudo"), NUM_CLASSES, 512, top_k=5, num_shards=4,
                                          image_size=image_size)
        config = TrainConfig(model=model_name, labeled=labeled_glob, model_dir=os.path.join(work, "run"),
                             pseudo=pseudo_glob, pseudo_ratio=pseudo_ratio, batch_size=batch_size,
                             num_classes=NUM_CLASSES, labeled_examples=256, train_steps=1_000_000,
                             shuffle_buffer=256, jit_compile=jit_compile, strategy="cpu",
                             randaugment_layers=randaugment_layers)
        builder = inputs.InputBuilder(config, sources.open_source(labeled_glob, num_classes=NUM_CLASSES),
                                      pseudo.open_pseudo(pseudo_glob, NUM_CLASSES))
        strategy = tf.distribute.get_strategy()
        trainer = trainer_lib.Trainer(config, strategy, builder)
        images_per_step = trainer.images_per_step
        real_iterator = iter(strategy.distribute_datasets_from_function(builder.train_dataset))
        prepared = next(iter(builder.train_dataset(tf.distribute.InputContext())))
        synthetic_dataset = tf.data.Dataset.from_tensors(prepared).repeat()
        synthetic_iterator = iter(strategy.distribute_datasets_from_function(lambda context: synthetic_dataset))
        real, synthetic = alternate(trainer, [real_iterator, synthetic_iterator], images_per_step, seconds)
    return {"model": model_name, "image_size": size, "labeled_batch": batch_size,
            "pseudo_batch": batch_size * pseudo_ratio, "compile_mode": trainer.compile_mode,
            "randaugment_layers": config.model_config.randaugment_layers,
            "real_images_per_s": round(real, 2), "synthetic_images_per_s": round(synthetic, 2),
            "ratio": round(real / synthetic, 3), "cpu_cores": os.cpu_count()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_rs_small", choices=sorted(models.CONFIGS))
    parser.add_argument("--batch_size", type=int, default=8, help="labeled images per step")
    parser.add_argument("--pseudo_ratio", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per side, over all rounds")
    parser.add_argument("--jit_compile", choices=["auto", "xla", "graph"], default="auto")
    parser.add_argument("--randaugment_layers", type=int, default=None,
                        help="override the model's RandAugment ops per image (0: off, to isolate its cost)")
    args = parser.parse_args()
    result = measure(args.model, args.batch_size, args.pseudo_ratio, args.seconds, args.jit_compile,
                     args.randaugment_layers)
    print(f"{result['model']} at {result['image_size']} px, {result['labeled_batch']} labeled + "
          f"{result['pseudo_batch']} pseudo images per step (compile mode {result['compile_mode']}):")
    print(f"  real input (TFRecords, decode, crop, flip, RandAugment x{result['randaugment_layers']}): "
          f"{result['real_images_per_s']:.1f} images/s")
    print(f"  synthetic in-memory batch: {result['synthetic_images_per_s']:.1f} images/s")
    print(f"  real / synthetic: {result['ratio']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

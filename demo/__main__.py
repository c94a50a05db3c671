"""`make demo`: the whole self-training loop, offline, on real handwritten digits.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits. They become 32 px PNG files:
a test set (30%), a small labeled set (10% of the rest) and an unlabeled set (the other
90%, labels hidden). Then student.selftrain (the command a user runs on their own data, shown
first) chains the product's own entry points, each run as a user would:

  0. python -m student.train     the teacher, supervised, on the labeled set
     python -m student.train     the control: the students' model, schedule and noise on the
                                 labeled set alone (the supervised model a student must beat)
  1. python -m pipeline.label    the teacher labels the unlabeled folder (DirectRunner)
     python -m pipeline.report   the confidence report, with the test set as holdout
     python -m student.train     a noised student on labeled + pseudo-labeled mixed batches
  2. round 1 again with student 1 as the teacher (student 2)

and prints test accuracy and error of teacher, control, student 1 and student 2, and the
pseudo-labels' accuracy against the hidden labels. It fails unless student 1's test error is
below the control's: the gain of self-training is measured against a supervised model of the
student's own schedule and noise, not against a teacher trained half as long. --seed picks
the split and every training seed. Every run's files stay under --workdir (the loop's
layout: teacher/, control/, round1/labels, round1/report.html, round1/student, ..., logs/,
summary.json).
"""

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
from PIL import Image

from demo import recipe
from student import selftrain

TEST_FRACTION = 0.3
LABELED_FRACTION = 0.1
IMAGE_SIZE = 32


def save_scan(scan, path):
    """A grey uint8 scan -> an IMAGE_SIZE px PNG (bicubic): how every demo and benchmark scan is written."""
    Image.fromarray(scan).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC).save(path)


def materialise_digits(root, seed=0):
    """Writes labeled/, test/ (one folder per class), unlabeled/ and the hidden labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    test_count = int(round(TEST_FRACTION * len(order)))
    test, train = order[:test_count], order[test_count:]
    labeled_count = int(round(LABELED_FRACTION * len(train)))
    # Stratified labeled subset: the same number of scans of every digit (as far as possible).
    by_class = {c: [i for i in train if digits.target[i] == c] for c in range(10)}
    labeled, rank = [], 0
    while len(labeled) < labeled_count:
        labeled += [by_class[c][rank] for c in range(10) if rank < len(by_class[c])][:labeled_count - len(labeled)]
        rank += 1
    unlabeled = sorted(set(train) - set(labeled))

    def write(index, path):
        save_scan((digits.images[index] * (255.0 / 16.0)).astype(np.uint8), path)

    for split, indices in (("labeled", labeled), ("test", test)):
        for c in range(10):
            os.makedirs(os.path.join(root, split, f"digit_{c}"), exist_ok=True)
        for index in indices:
            write(index, os.path.join(root, split, f"digit_{digits.target[index]}", f"scan_{index:04d}.png"))
    os.makedirs(os.path.join(root, "unlabeled"), exist_ok=True)
    hidden = {}
    for index in unlabeled:
        name = f"scan_{index:04d}.png"
        write(index, os.path.join(root, "unlabeled", name))
        hidden[name] = int(digits.target[index])
    with open(os.path.join(root, "hidden_labels.json"), "w") as handle:
        json.dump(hidden, handle)
    return {"labeled": len(labeled), "unlabeled": len(unlabeled), "test": len(test)}


def pseudo_label_accuracy(labels_dir, hidden_labels, class_names):
    """Share of the KEPT pseudo-labels (duplicates counted once) whose top-1 is the hidden digit."""
    from pipeline import records

    with open(os.path.join(labels_dir, "manifest.json")) as handle:
        manifest = json.load(handle)
    correct = total = 0
    for name in manifest["files"]["train"]:
        for payload in records.read_tfrecords(os.path.join(labels_dir, name)):
            record = records.parse_example(payload)
            if record["label/copy_index"]:
                continue
            truth = hidden_labels[os.path.basename(record["image/source_uri"])]
            correct += class_names[int(record["label/top_k_indices"][0])] == f"digit_{truth}"
            total += 1
    return correct / max(total, 1), total, manifest["counts"]


def loop_settings(workdir, sizes, rounds, teacher_steps, student_steps, min_confidence, seed):
    """The demo as a student.selftrain run: the recipe's flags become the loop's per-step flags."""
    data = os.path.join(workdir, "data")
    return selftrain.LoopSettings(
        labeled=f"{data}/labeled", unlabeled=f"{data}/unlabeled/*", workdir=workdir, rounds=rounds,
        model=recipe.MODEL, control=True, eval=f"{data}/test", holdout=f"{data}/test",
        train_flags=tuple(recipe.train_flags(sizes["labeled"], seed)),
        teacher_train_flags=tuple(recipe.role_train_flags(teacher_steps, student=False)),
        student_train_flags=tuple(recipe.role_train_flags(student_steps, student=True)),
        label_flags=tuple(recipe.label_flags(min_confidence)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="out/demo", help="Where data, runs, labels and the report go.")
    parser.add_argument("--rounds", type=int, default=2, help="Students trained in turn (each teaches the next).")
    parser.add_argument("--teacher_steps", type=int, default=recipe.TEACHER_STEPS)
    parser.add_argument("--student_steps", type=int, default=recipe.STUDENT_STEPS)
    parser.add_argument("--min_confidence", type=float, default=recipe.MIN_CONFIDENCE)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data split and of every training run.")
    parser.add_argument("--require_improvement", action=argparse.BooleanOptionalAction, default=True,
                        help="Fail unless student 1's test error is below the control's (off for smoke runs "
                             "of a few steps).")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    if os.path.exists(workdir):
        import shutil

        shutil.rmtree(workdir)
    start = time.perf_counter()
    sizes = materialise_digits(os.path.join(workdir, "data"), args.seed)
    print(f"digits: {sizes['labeled']} labeled, {sizes['unlabeled']} unlabeled (labels hidden), "
          f"{sizes['test']} test scans at {IMAGE_SIZE} px in {workdir}/data")
    with open(os.path.join(workdir, "data", "hidden_labels.json")) as handle:
        hidden = json.load(handle)
    class_names = sorted(os.listdir(os.path.join(workdir, "data", "labeled")))

    settings = loop_settings(workdir, sizes, args.rounds, args.teacher_steps, args.student_steps,
                             args.min_confidence, args.seed)
    print("\n$ python -m student.selftrain " + shlex.join(selftrain.to_argv(settings)), flush=True)
    try:
        summary = selftrain.run(settings)
    except selftrain.SelfTrainError as error:
        sys.exit(f"student.selftrain: error: {error}")
    by_name = {row["name"]: row for row in summary["rows"]}
    rows = [("teacher (labeled only)", by_name["teacher"]["top_1"], None),
            ("control (labeled only)", by_name["control"]["top_1"], None)]
    for index in range(1, args.rounds + 1):
        student = by_name[f"student {index}"]
        rows.append((f"student {index}", student["top_1"], pseudo_label_accuracy(student["labels"], hidden,
                                                                                 class_names)))

    print(f"\n{'model (seed ' + str(args.seed) + ')':<24}{'test top-1':>11}{'error':>8}   "
          "pseudo-labels it was trained on")
    for name, accuracy, labels in rows:
        detail = "" if labels is None else (
            f"{labels[0]:.3f} correct of {labels[1]} kept ({labels[2]['below_threshold']} below threshold, "
            f"{labels[2]['duplicates']} duplicates for balance)")
        print(f"{name:<24}{accuracy:>11.4f}{1 - accuracy:>8.4f}   {detail}")
    print(f"\nreports: {workdir}/round*/report.html   total {time.perf_counter() - start:.0f} s")
    teacher_error, control_error, student_error = (1 - rows[index][1] for index in range(3))
    for name, error in (("teacher", teacher_error), ("control", control_error)):
        print(f"student 1's test error is {student_error / error if error else float('inf'):.2f}x the {name}'s "
              f"({error:.4f} -> {student_error:.4f})")
    if args.require_improvement and student_error >= control_error:
        sys.exit(f"student 1's test error ({student_error:.4f}) is not below the control's ({control_error:.4f}): "
                 "the pseudo-labels did not beat supervised training of the same schedule and noise.")


if __name__ == "__main__":
    main()

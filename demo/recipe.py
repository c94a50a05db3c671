"""The demo's training and labeling settings: the paper's recipe, shrunk to 32 px digits.

What changes from the ImageNet recipe, and why:
- resnet_rs_tiny (same blocks, 1 per stage, narrow) at 32 px: the scans are 8x8 upsampled.
- Steps instead of epochs: a few hundred steps of batch 32 labeled images (+3x pseudo).
- EMA decay 0.99 instead of 0.9999. The EMA has the reference's warm-up, min(decay,
  (1 + n) / (10 + n)), which is below 0.99 for the first 890 steps; with 0.9999 it would be
  (1 + n) / (10 + n) for the whole of these runs, an average of ever more steps (~n / 10).
- A larger base learning rate (0.4 per 256 instead of 0.1): short schedules need it.
- Milder crops: at least 50% of the scan (not 8%), and no horizontal flip (a flipped digit
  is another symbol).
- The teacher trains with RandAugment magnitude 5; the students with resnet_rs_tiny's own
  10 (translate and cutout scaled to 32 px, see student/randaugment.py) and twice the
  teacher's steps. Noisy Student noises the student more than the teacher; measured on
  seed 0 (AMD EPYC, student 1 test top-1 with the same teacher and labels): m5 800 steps
  0.9518, m2 800 0.9462, m10 800 0.9555, m5 1600 0.9592, m10 1600 0.9610; hard labels
  (m10 1600) 0.9592; the old pseudo weight of 1/3 per image (m5 800) 0.9481.
- --deterministic (TF op determinism) and one fixed compile mode for training and labeling
  (--jit_compile=xla, not auto, whose measured choice may differ between two runs): every
  run on one machine prints the same table. Other CPUs round differently and print other,
  equally valid, numbers.
The student is as large as the teacher and noised (RandAugment, dropout, stochastic depth
from models.config), as in Noisy Student's equal-size iterations.
"""

MODEL = "resnet_rs_tiny"
BATCH_SIZE = 32
TEACHER_STEPS = 800
STUDENT_STEPS = 1600
TEACHER_MAGNITUDE = 5
STUDENT_MAGNITUDE = 10
PSEUDO_RATIO = 3
MIN_CONFIDENCE = 0.3


def train_flags(labeled_count, seed=0):
    """student.selftrain --train_flags: what the teacher's and the students' runs share."""
    return [f"--batch_size={BATCH_SIZE}", "--warmup_epochs=5", "--base_learning_rate=0.4", "--ema_decay=0.99",
            "--eval_batch_size=64", "--shuffle_buffer=2048", f"--labeled_examples={labeled_count}",
            "--crop_min_area=0.5", "--norandom_flip", "--deterministic", "--jit_compile=xla", f"--seed={seed}"]


def role_train_flags(steps, student):
    """--teacher_train_flags (student=False) or --student_train_flags: length and noise differ."""
    flags = [f"--train_steps={steps}", f"--checkpoint_every={steps}", f"--log_every={max(1, steps // 4)}",
             f"--randaugment_magnitude={STUDENT_MAGNITUDE if student else TEACHER_MAGNITUDE}"]
    return flags + ([f"--pseudo_ratio={PSEUDO_RATIO}"] if student else [])


def label_flags(min_confidence=MIN_CONFIDENCE):
    # Noisy Student: confidence threshold 0.3, then balance every class to the same count
    # (pipeline.label's default, derived from the data: the unlabeled scans // 10 classes).
    # One compile mode, as for training: the teacher's measured choice ("auto") can differ
    # between runs, and XLA and graph round differently, so a round's labels (and the student
    # trained on them) would too.
    return [f"--min_confidence={min_confidence}", "--num_shards=4",
            "--max_batch_size=64", "--jit_compile=xla"]

"""The student trainer: co-training on labeled and pseudo-labeled images in mixed batches.

`train.run(TrainConfig(...))` (or `python -m student.train`) trains a ResNet-RS with the
paper's recipe on TPU, GPU or CPU; without pseudo-labels it trains a supervised teacher.
"""

from models import cli

# Before student.config imports TensorFlow (which reads the level once, on load).
cli.quiet_tensorflow()

from student.config import ConfigError, TrainConfig  # noqa: E402

__all__ = ["ConfigError", "TrainConfig"]

"""The teacher: a self-describing exported ResNet-RS and batched soft-label prediction.

`load(path)` -> `Teacher` with `predict(images, temperature, top_k, full_distribution)`;
`export(model, model_name, output, ...)` writes a teacher directory (or use
`python -m teacher.export`).
"""

from models import cli

# Before teacher.directory imports TensorFlow (which reads the level once, on load).
cli.quiet_tensorflow()

from teacher.directory import export  # noqa: E402
from teacher.metadata import TeacherError, TeacherMetadata  # noqa: E402
from teacher.predictor import Predictions, Teacher, load, soft_labels  # noqa: E402

__all__ = ["Predictions", "Teacher", "TeacherError", "TeacherMetadata", "export", "load", "soft_labels"]

"""The teacher: a self-describing exported ResNet-RS and batched soft-label prediction.

`load(path)` -> `Teacher` with `predict(images, temperature, top_k, full_distribution)`;
`export(model, model_name, output, ...)` writes a teacher directory (or use
`python -m teacher.export`).
"""

from teacher.directory import export
from teacher.metadata import TeacherError, TeacherMetadata
from teacher.predictor import Predictions, Teacher, load, soft_labels

__all__ = ["Predictions", "Teacher", "TeacherError", "TeacherMetadata", "export", "load", "soft_labels"]

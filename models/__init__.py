"""The ResNet-RS family in Keras 3: `create(name, num_classes=1000, **overrides)`, `config(name)`.

Everything else in the project depends on this package; it depends only on Keras and TF.
"""

from models.configs import CONFIGS, PAPER_NAMES, SMALL_NAMES, ModelConfig, config

_KERAS_NAMES = ("allow_deep_graphs", "build", "create", "stochastic_depth_rates")


def __getattr__(name):
    # The builders load Keras (so TensorFlow) on first use, not on `import models`: models.cli
    # and models.configs serve entry points that never build a model (pipeline.report, --help).
    if name in _KERAS_NAMES:
        from models import resnet_rs

        return getattr(resnet_rs, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = ["CONFIGS", "PAPER_NAMES", "SMALL_NAMES", "ModelConfig", "allow_deep_graphs", "build",
           "config", "create", "stochastic_depth_rates"]

"""The ResNet-RS family in Keras 3: `create(name, num_classes=1000, **overrides)`, `config(name)`.

Everything else in the project depends on this package; it depends only on Keras and TF.
"""

from models.configs import CONFIGS, PAPER_NAMES, SMALL_NAMES, ModelConfig, config
from models.resnet_rs import allow_deep_graphs, build, create, stochastic_depth_rates

__all__ = ["CONFIGS", "PAPER_NAMES", "SMALL_NAMES", "ModelConfig", "allow_deep_graphs", "build",
           "config", "create", "stochastic_depth_rates"]

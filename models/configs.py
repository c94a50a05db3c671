"""Scaling configurations of the ResNet-RS family, as plain data.

Values follow the paper's Table 7/Appendix and the TPU reference configs
(tensorflow/tpu models/official/resnet/resnet_rs/configs/resnetrs{depth}_i{size}.yaml).
Where the reference publishes several image sizes for one depth, the default here is
the size the paper uses for that depth's headline row: 50@160, 101@192, 152@256,
200@256, 270@256, 350@256, 420@320. Other published sizes are available by name
(`resnet_rs_152_i192`) so a user can pick the exact released recipe.
"""

import dataclasses

# The reference evaluates at its training size (its eval preprocessing uses `image_size`).
# Normalisation is ImageNet's per-channel mean/std on 0-255 pixels, as in resnet_main.py.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# The TPU reference trains with BN momentum 0 and puts the moving statistics under its
# weight EMA (get_ema_vars), so the averaged statistics come from the EMA. The student
# trainer does the same (REFERENCE_BN_MOMENTUM whenever its EMA is on; student/recipe.py
# WeightAverage). The default stays 0.9 (the reference's default MOVING_AVERAGE_DECAY for
# ResNets trained without EMA) for a model trained without such an EMA, where momentum 0
# would leave the statistics of the last batch alone.
# The reference's eval crop pads by 32 px at every size (0.83 of the side at 160 px).
REFERENCE_CROP_PADDING = 32
# Small members keep the reference's crop fraction at 224 px, 224 / (224 + 32) = 0.875,
# rather than its 32 px padding, which at 32 px would keep only the central half of the side.
SMALL_CROP_FRACTION = 224 / 256

REFERENCE_BN_MOMENTUM = 0.0
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

BLOCK_COUNTS = {
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
        200: (3, 24, 36, 3),
        270: (4, 29, 53, 4),
        350: (4, 36, 72, 4),
        420: (4, 44, 87, 4),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that distinguishes one member of the family from another."""

    name: str
    block_counts: tuple
    train_image_size: int
    eval_image_size: int
    dropout_rate: float
    stochastic_depth_rate: float
    randaugment_magnitude: int
    randaugment_layers: int = 2
    stem_filters: tuple = (32, 32, 64)
    stage_filters: tuple = (64, 128, 256, 512)
    se_ratio: float = 0.25
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON
    mean_rgb: tuple = IMAGENET_MEAN_RGB
    stddev_rgb: tuple = IMAGENET_STDDEV_RGB
    # Eval centre crop keeps image_size / (image_size + crop_padding) of the shorter side.
    crop_padding: int = REFERENCE_CROP_PADDING

    def to_dict(self):
        return dataclasses.asdict(self)


def _paper(depth, image_size, dropout_rate, stochastic_depth_rate, magnitude, suffix=""):
    return ModelConfig(
        name=f"resnet_rs_{depth}{suffix}",
        block_counts=BLOCK_COUNTS[depth],
        train_image_size=image_size,
        eval_image_size=image_size,
        dropout_rate=dropout_rate,
        stochastic_depth_rate=stochastic_depth_rate,
        randaugment_magnitude=magnitude,
    )


_PAPER_ROWS = [
    # depth, image size, dropout, stochastic depth, RandAugment magnitude, name suffix
    (50, 160, 0.25, 0.0, 10, ""),
    (101, 160, 0.25, 0.0, 10, "_i160"),
    (101, 192, 0.25, 0.0, 15, ""),
    (152, 192, 0.25, 0.0, 15, "_i192"),
    (152, 224, 0.25, 0.0, 15, "_i224"),
    (152, 256, 0.25, 0.0, 15, ""),
    (200, 256, 0.25, 0.1, 15, ""),
    (270, 256, 0.25, 0.1, 15, ""),
    (350, 256, 0.25, 0.1, 15, ""),
    (350, 320, 0.4, 0.1, 15, "_i320"),
    (420, 320, 0.4, 0.1, 15, ""),
]

# Small members built by the same code, for tests and demos (not from the paper): fewer
# blocks, narrower stages, small images; the regularisation mirrors resnet_rs_50.
_SMALL = [
    ModelConfig(
        name="resnet_rs_tiny",
        block_counts=(1, 1, 1, 1),
        train_image_size=32,
        eval_image_size=32,
        dropout_rate=0.25,
        stochastic_depth_rate=0.0,
        randaugment_magnitude=10,
        stem_filters=(8, 8, 16),
        stage_filters=(16, 32, 64, 128),
        crop_padding=round(32 / SMALL_CROP_FRACTION - 32),
    ),
    ModelConfig(
        name="resnet_rs_small",
        block_counts=(2, 2, 2, 2),
        train_image_size=64,
        eval_image_size=64,
        dropout_rate=0.25,
        stochastic_depth_rate=0.05,
        randaugment_magnitude=10,
        stem_filters=(16, 16, 32),
        stage_filters=(32, 64, 128, 256),
        crop_padding=round(64 / SMALL_CROP_FRACTION - 64),
    ),
]

CONFIGS = {c.name: c for c in [_paper(*row) for row in _PAPER_ROWS] + _SMALL}
PAPER_NAMES = tuple(f"resnet_rs_{depth}" for depth in BLOCK_COUNTS)
SMALL_NAMES = tuple(c.name for c in _SMALL)


def config(name, **overrides):
    """The scaling config of `name`, with any field replaced by `overrides`."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(CONFIGS)}.")
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown config field(s) {unknown} for {name!r}; fields are {fields}.")
    return dataclasses.replace(CONFIGS[name], **overrides)

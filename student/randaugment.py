"""RandAugment as the ResNet-RS reference runs it, driven by a per-example seed.

Follows `distort_image_with_randaugment` in tensorflow/tpu
models/official/efficientnet/autoaugment.py (used by models/official/resnet/resnet_rs),
re-implemented here with stateless randomness. Each of `num_layers` layers picks one of
16 ops uniformly and applies it at the shared magnitude m (reference `_MAX_LEVEL` = 10):

  op            argument at magnitude m                      m=10      m=15
  AutoContrast  -                                            -         -
  Equalize      -                                            -         -
  Invert        -                                            -         -
  Rotate        +-(m/10)*30 degrees, random sign             30        45
  Posterize     int((m/10)*4) bits kept                      4         6
  Solarize      threshold int((m/10)*256) mod 256 (uint8)    0 (all)   128
  Color         blend factor (m/10)*1.8 + 0.1                1.9       2.8
  Contrast      blend factor, as Color                       1.9       2.8
  Brightness    blend factor, as Color                       1.9       2.8
  Sharpness     blend factor, as Color                       1.9       2.8
  ShearX        +-(m/10)*0.3, random sign                    0.3       0.45
  ShearY        +-(m/10)*0.3, random sign                    0.3       0.45
  TranslateX    +-(m/10)*translate_const px, random sign     100       150
  TranslateY    +-(m/10)*translate_const px, random sign     100       150
  Cutout        square of side 2*int((m/10)*cutout_const)    80        120
  SolarizeAdd   +int((m/10)*110) to pixels below 128         110       165

Geometric ops use nearest-neighbour sampling and fill what comes from outside the image
with 128, as do Cutout's squares. Ops work on uint8 like the reference; `augment` casts in
and out.

Where the reference's code does something other than its comments or PIL suggest, this
module does what the reference's code computes, because that is what trained the paper's
models:
- Probability: the reference draws `prob ~ U(0.2, 0.8)` for every op but never uses it;
  its loop applies the selected op through `tf.cond(tf.equal(i, op_to_select), ...)`, and
  `_parse_policy_info` forwards `prob` only to ops with a `prob` argument (none of these
  16). So the chosen op is always applied, and no probability is drawn here.
- Solarize: the threshold int((m/10)*256) is 256 at m=10 and 384 at m=15, but the
  reference compares it with the uint8 image, so it becomes a uint8 constant and wraps
  to 0 and 128: at m=10 every pixel is inverted, at m=15 Solarize thresholds at 128 as
  at m=5 (run in tf.compat.v1 graph mode; tests/fixtures/randaugment_golden.md).
- Contrast: the reference's "mean" is `reduce_sum(histogram) / 256`, the pixel count over
  256, not the mean grey level (196 at 224 px, 100 at 160 px, clipped to 255 above 256 px).
Deviation: randomness (op choice, sign, cutout centre) comes from stateless ops on the
example's seed instead of the reference's stateful `tf.random_uniform`, so an example's
augmentation is reproducible. Translate/Cutout constants are constructor arguments, with
the reference's (100, 40) as defaults.
"""

import math

import tensorflow as tf

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
MAX_LEVEL = 10.0  # reference _MAX_LEVEL: magnitude m gives each op m / 10 of its range
MAX_MAGNITUDE = 20  # above it Posterize would keep more than 8 bits, which the reference leaves undefined
TRANSLATE_CONST = 100  # reference RandAugment hparams, in pixels of its 160-320 px images
CUTOUT_CONST = 40
FILL_VALUE = 128  # reference replace_value: grey for pixels a transform uncovers
SOLARIZE_ADD_THRESHOLD = 128  # reference solarize_add default threshold


# Level -> argument, as the reference's level_to_arg (Python floats/ints, fixed per magnitude).

def rotate_degrees(magnitude):
    return magnitude / MAX_LEVEL * 30.0


def shear_level(magnitude):
    return magnitude / MAX_LEVEL * 0.3


def translate_pixels(magnitude, translate_const=TRANSLATE_CONST):
    return magnitude / MAX_LEVEL * float(translate_const)


def enhance_factor(magnitude):
    return magnitude / MAX_LEVEL * 1.8 + 0.1


def posterize_bits(magnitude):
    return int(magnitude / MAX_LEVEL * 4)


def solarize_threshold(magnitude):
    return int(magnitude / MAX_LEVEL * 256)


def solarize_addition(magnitude):
    return int(magnitude / MAX_LEVEL * 110)


def cutout_pad_size(magnitude, cutout_const=CUTOUT_CONST):
    return int(magnitude / MAX_LEVEL * cutout_const)


# The ops: uint8 (H, W, 3) in, uint8 (H, W, 3) out.

def blend(image1, image2, factor):
    """image1 + factor * (image2 - image1) in float32, clipped to 0..255, truncated to uint8.

    The reference clips only when extrapolating (factor outside (0, 1)); interpolation
    stays inside 0..255, so clipping always gives the same result.
    """
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    image1 = tf.cast(image1, tf.float32)
    blended = image1 + factor * (tf.cast(image2, tf.float32) - image1)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def auto_contrast(image):
    """Each channel rescaled linearly so its min..max spans 0..255; flat channels unchanged."""
    low = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
    high = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
    # Same float32 operations as the reference (scale, then offset = -low * scale); a flat
    # channel gets a dummy range so no NaN is computed, and is left as it was below.
    scale = 255.0 / tf.where(high > low, high - low, 1.0)
    offset = -low * scale
    stretched = tf.cast(tf.clip_by_value(tf.cast(image, tf.float32) * scale + offset, 0.0, 255.0), tf.uint8)
    return tf.where(high > low, stretched, image)


def equalize(image):
    """PIL-style histogram equalisation of each channel, with the reference's step and LUT."""
    shape = tf.shape(image)
    channels = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))  # (3, H*W)
    # The reference's tf.histogram_fixed_width(values, [0, 255], nbins=256) puts each
    # integer value v in bin v, i.e. a bincount.
    histogram = tf.math.bincount(channels, minlength=256, maxlength=256, axis=-1)  # (3, 256)
    # Reference: step = (sum of the nonzero bins - the last nonzero bin) // 255; the last
    # nonzero bin is the count of the channel's largest value.
    top_count = tf.gather(histogram, tf.reduce_max(channels, axis=1), batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - top_count) // 255
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(histogram, axis=1) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
    equalized = tf.gather(lut, channels, batch_dims=1)
    # step 0 (fewer than 255 pixels besides those at the channel's largest value): unchanged, as the reference.
    equalized = tf.where(step[:, None] > 0, equalized, channels)
    return tf.reshape(tf.transpose(tf.cast(equalized, tf.uint8)), shape)


def invert(image):
    return 255 - image


def posterize(image, bits):
    """Keeps the top `bits` bits of each value (uint8 shifts, as the reference)."""
    shift = tf.constant(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
    """Inverts values >= threshold taken modulo 256: 256 (m=10) inverts all, 384 (m=15) is 128.

    The reference writes `image < threshold` on the uint8 image with a Python int; TF
    converts the int to a uint8 constant, wrapping it (make_tensor_proto casts with numpy's
    astype; TF 1 with numpy 1 wrapped too, not run here). Wrapped explicitly here so the
    result does not depend on how a TF version converts out-of-range constants.
    """
    return tf.where(image < tf.constant(threshold % 256, tf.uint8), image, 255 - image)


def solarize_add(image, addition, threshold=SOLARIZE_ADD_THRESHOLD):
    """Adds `addition` (clipped to 0..255) to values below `threshold`."""
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
    return tf.where(image < threshold, added, image)


def color(image, factor):
    """Blend from the image's greyscale version (TF's rgb_to_grayscale, as the reference)."""
    return blend(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image, factor)


def contrast(image, factor):
    """Blend from a flat image at the reference's 'mean': pixel count / 256, clipped, truncated."""
    pixel_count = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
    degenerate = tf.cast(tf.clip_by_value(pixel_count / 256.0, 0.0, 255.0), tf.uint8)
    return blend(tf.fill(tf.shape(image), degenerate), image, factor)


def brightness(image, factor):
    """Blend from black."""
    return blend(tf.zeros_like(image), image, factor)


SMOOTH_KERNEL = [[1, 1, 1], [1, 5, 1], [1, 1, 1]]  # PIL's SMOOTH filter, divided by 13 below


def sharpness(image, factor):
    """Blend from the image smoothed with PIL's SMOOTH kernel; the 1-pixel border stays original."""
    kernel = tf.constant(SMOOTH_KERNEL, tf.float32, shape=[3, 3, 1, 1]) / 13.0
    kernel = tf.tile(kernel, [1, 1, 3, 1])
    smoothed = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], padding="VALID")[0]
    smoothed = tf.cast(tf.clip_by_value(smoothed, 0.0, 255.0), tf.uint8)
    interior = tf.pad(tf.ones_like(smoothed, tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior, tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(degenerate, image, factor)


def _transform(image, transform):
    """Output pixel (x, y) takes the input at the nearest pixel to
    ((a0 x + a1 y + a2), (b0 x + b1 y + b2)), or 128 where that lies outside the image.

    The reference runs contrib's transform (nearest, zero fill) on the image plus an
    all-ones channel and greys pixels whose extra channel came out 0; a constant fill of
    128 on the same transform gives the same pixels.
    """
    transform = tf.cast(tf.stack(transform), tf.float32)[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=float(FILL_VALUE), interpolation="NEAREST", fill_mode="CONSTANT")[0]


def rotate(image, degrees):
    """Rotation about the image centre; contrib's angles_to_projective_transforms, in float32."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])


def shear_x(image, level):
    """Output (x, y) samples input (x + level * y, y): the reference's [1, level, 0, 0, 1, 0, 0, 0]."""
    return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image, level):
    """Output (x, y) samples input (x, level * x + y): the reference's [1, 0, 0, level, 1, 0, 0, 0]."""
    return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image, pixels):
    """Output (x, y) samples input (x + pixels, y): content moves left by `pixels`.

    The reference calls contrib translate with dx = -pixels, whose transform offset is -dx.
    """
    return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image, pixels):
    """Output (x, y) samples input (x, y + pixels): content moves up by `pixels`."""
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def cutout(image, pad_size, center_y, center_x):
    """Rows [cy - pad, cy + pad) x columns [cx - pad, cx + pad), clipped to the image, set to 128."""
    rows = tf.range(tf.shape(image)[0])
    columns = tf.range(tf.shape(image)[1])
    in_rows = (rows >= center_y - pad_size) & (rows < center_y + pad_size)
    in_columns = (columns >= center_x - pad_size) & (columns < center_x + pad_size)
    square = (in_rows[:, None] & in_columns[None, :])[:, :, None]
    return tf.where(square, tf.constant(FILL_VALUE, tf.uint8), image)


def random_sign(value, seed):
    """+value or -value with probability 1/2 each (reference _randomly_negate_tensor)."""
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -value, value)


def random_cutout(image, pad_size, seed):
    """Cutout centred uniformly over the whole image, as the reference's."""
    y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    center_y = tf.random.stateless_uniform([], y_seed, minval=0, maxval=tf.shape(image)[0], dtype=tf.int32)
    center_x = tf.random.stateless_uniform([], x_seed, minval=0, maxval=tf.shape(image)[1], dtype=tf.int32)
    return cutout(image, pad_size, center_y, center_x)


class RandAugment:
    """`num_layers` ops per image at `magnitude`, each a pure function of the example's seed.

    `translate_const` and `cutout_const` are in pixels (the reference's 100 and 40 for
    its 160-320 px images).
    """

    def __init__(self, num_layers, magnitude, translate_const=TRANSLATE_CONST, cutout_const=CUTOUT_CONST):
        if not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}.")
        self.num_layers = num_layers
        self.magnitude = magnitude
        self.translate_const = translate_const
        self.cutout_const = cutout_const

    def op_functions(self, seed):
        """The 16 ops in OP_NAMES order, each image -> image with its argument at this magnitude.

        `seed` drives the ops' own randomness (sign of Rotate/Shear/Translate, cutout centre).
        """
        m = self.magnitude
        factor = enhance_factor(m)

        def signed(value):
            return random_sign(tf.constant(value, tf.float32), seed)

        return (
            auto_contrast,
            equalize,
            invert,
            lambda image: rotate(image, signed(rotate_degrees(m))),
            lambda image: posterize(image, posterize_bits(m)),
            lambda image: solarize(image, solarize_threshold(m)),
            lambda image: color(image, factor),
            lambda image: contrast(image, factor),
            lambda image: brightness(image, factor),
            lambda image: sharpness(image, factor),
            lambda image: shear_x(image, signed(shear_level(m))),
            lambda image: shear_y(image, signed(shear_level(m))),
            lambda image: translate_x(image, signed(translate_pixels(m, self.translate_const))),
            lambda image: translate_y(image, signed(translate_pixels(m, self.translate_const))),
            lambda image: random_cutout(image, cutout_pad_size(m, self.cutout_const), seed),
            lambda image: solarize_add(image, solarize_addition(m)),
        )

    def apply_op(self, image, op_index, seed):
        """uint8 image -> uint8 image with op `op_index` (a scalar int32 tensor) applied.

        tf.switch_case runs only the chosen branch, as the reference's chain of tf.conds.
        """
        functions = self.op_functions(seed)
        result = tf.switch_case(op_index, [lambda f=f: f(image) for f in functions])
        result.set_shape(image.shape)
        return result

    def layer_choices(self, seed):
        """Per layer, (op index uniform over the 16 ops, seed for that op's own randomness)."""
        choices = []
        for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, self.num_layers)):
            choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
            op_index = tf.random.stateless_uniform([], choice_seed, minval=0, maxval=len(OP_NAMES),
                                                   dtype=tf.int32)
            choices.append((op_index, op_seed))
        return choices

    def augment(self, image, seed):
        """float32 (H, W, 3) on 0..255 + int32/int64 [2] seed -> float32 (H, W, 3) on 0..255."""
        # As the reference's caller: clip, then cast (exact for integer-valued pixels).
        augmented = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        for op_index, op_seed in self.layer_choices(seed):
            augmented = self.apply_op(augmented, op_index, op_seed)
        return tf.cast(augmented, tf.float32)

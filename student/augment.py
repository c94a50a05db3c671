"""Training augmentation (the student's input noise) and the shared eval transform.

Train: Inception-style random crop (reference `_decode_and_random_crop`: 8-100% of the
area, aspect 3/4-4/3, decoding only the cropped window of a JPEG), bicubic resize to the
model's train size, random horizontal flip, RandAugment, then the model's normalisation.
Eval: `models.preprocessing.eval_transform`, the one the teacher and labeling job use.

Every random choice is a pure function of a per-example seed (stateless ops), derived by
the input pipeline from the example's position in the stream. The same example at the
same position gets the same augmentation in any process, which is what lets a resumed run
reproduce an uninterrupted one, and keeps augmentation independent of tf.data threading.
"""

import keras
import tensorflow as tf
from keras.src.random.seed_generator import SeedGenerator

from models import preprocessing

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 10

# The reference's RandAugment (tensorflow/tpu autoaugment.py) scales each op's range by
# magnitude / 10: rotation up to 30 degrees, shear 0.3, translation 100 px (at 224 px).
REFERENCE_MAX_LEVEL = 10.0
REFERENCE_ROTATION_DEGREES = 30.0
REFERENCE_SHEAR = 0.3
REFERENCE_TRANSLATE_FRACTION = 100 / 224
FILL_VALUE = 128.0  # the reference fills uncovered pixels with grey


class _ExampleSeeds(SeedGenerator):
    """A SeedGenerator whose draws are derived from one example's seed, statelessly.

    Keras preprocessing layers draw randomness from a SeedGenerator *variable*, which inside
    a parallel tf.data map gives thread-order-dependent results that no checkpoint can
    replay. Keras calls only `next()` on the object it is given, so this stand-in returns
    `fold_in(example_seed, draw number)` instead and holds no state.
    """

    def __init__(self, example_seed):  # no super().__init__: that would create the state variable
        self.example_seed = example_seed
        self.draws = 0

    def next(self, ordered=True):
        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.example_seed, self.draws)


class SeededRandAugment(keras.layers.RandAugment):
    """keras.layers.RandAugment at the paper's magnitude, driven by a per-example seed.

    Magnitude: Keras gives every op one `factor` in [0, 1] with op-specific meanings
    (rotation factor * 360 degrees, translation factor * size, ...), so no single factor
    reproduces the reference's ranges. factor = magnitude / 30 maps the paper's 15 to
    Keras' default 0.5 and 10 to 0.33, for the photometric ops (brightness, contrast,
    colour, sharpness, solarize, posterize). The three geometric ops would be far
    stronger than the reference at that factor (rotation up to 180 degrees at 0.5), so
    they are rebuilt with the reference's ranges: rotation +-30 * m/10 degrees,
    shear +-0.3 * m/10, translation +-(100/224) * m/10 of the image side.
    Other differences from the reference: Keras has no Cutout, Invert or Identity op,
    combines ShearX/ShearY into one op, and its Brightness adds an offset where the
    reference blends with black.
    """

    def __init__(self, magnitude, num_layers, **kwargs):
        super().__init__(value_range=(0, 255), num_ops=num_layers, factor=min(1.0, magnitude / 30), **kwargs)
        self.magnitude = magnitude
        level = magnitude / REFERENCE_MAX_LEVEL
        rotation = REFERENCE_ROTATION_DEGREES * level / 360
        self.random_rotation = keras.layers.RandomRotation((-rotation, rotation), fill_mode="constant",
                                                           fill_value=FILL_VALUE)
        shear = min(1.0, REFERENCE_SHEAR * level)
        self.random_shear = keras.layers.RandomShear(x_factor=shear, y_factor=shear, fill_mode="constant",
                                                     fill_value=FILL_VALUE)
        translate = min(1.0, REFERENCE_TRANSLATE_FRACTION * level)
        self.random_translation = keras.layers.RandomTranslation(translate, translate, fill_mode="constant",
                                                                 fill_value=FILL_VALUE)
        self._set_example_seeds(None)

    def _set_example_seeds(self, seeds):
        # Bypasses Layer.__setattr__, which would track the generator as layer state (and
        # refuse new state once the layer is built); it lives only while one call is traced.
        object.__setattr__(self, "_example_seeds", seeds)

    def _get_seed_generator(self, backend=None):
        if self._example_seeds is None:
            raise RuntimeError("SeededRandAugment draws randomness only through augment(image, seed).")
        return self._example_seeds

    def augment(self, image, seed):
        """uint8 or float (H, W, 3) on 0-255 -> float32 (H, W, 3); `seed` is an int32/int64 [2] tensor."""
        self._set_example_seeds(_ExampleSeeds(seed))
        try:
            return tf.cast(self(image, training=True), tf.float32)
        finally:
            self._set_example_seeds(None)


def _crop_window(image_shape, seed, area_range):
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=whole_image, seed=seed, min_object_covered=CROP_MIN_OBJECT_COVERED,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE, area_range=area_range, max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    return offset_y, offset_x, height, width


def random_crop(image_bytes, seed, area_range=CROP_AREA_RANGE):
    """Encoded image -> uint8 (h, w, 3): an Inception-style random crop of it."""

    def jpeg():
        # Decoding only the window skips most of the IDCT work on large photos.
        offset_y, offset_x, height, width = _crop_window(tf.io.extract_jpeg_shape(image_bytes), seed, area_range)
        return tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([offset_y, offset_x, height, width]), channels=3)

    def other_format():
        image = preprocessing.decode_image(image_bytes)
        offset_y, offset_x, height, width = _crop_window(tf.shape(image), seed, area_range)
        return tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other_format)
    image.set_shape([None, None, 3])
    return image


def train_transform(image_bytes, seed, model_config, randaugment=None, crop_min_area=CROP_AREA_RANGE[0],
                    flip=True):
    """Encoded image + per-example seed -> normalised float32 (S, S, 3) at the train size.

    `crop_min_area` and `flip` are the paper's (0.08, True) by default; images whose label
    depends on position or orientation (digits, text) need a larger crop and no flip.
    """
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    size = model_config.train_image_size
    image = tf.image.resize(random_crop(image_bytes, crop_seed, (crop_min_area, 1.0)), [size, size],
                            method="bicubic")
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    # RandAugment's ops expect pixel values; bicubic overshoot is clipped and rounded as a decoded image would be.
    image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
    if randaugment is not None:
        image = randaugment.augment(image, augment_seed)
    image.set_shape([size, size, 3])
    return preprocessing.normalize(image, model_config.mean_rgb, model_config.stddev_rgb)


def make_randaugment(model_config):
    """The RandAugment layer for a model size, or None when its magnitude or layer count is 0."""
    if not model_config.randaugment_magnitude or not model_config.randaugment_layers:
        return None
    return SeededRandAugment(model_config.randaugment_magnitude, model_config.randaugment_layers)


def eval_transform(image_bytes, model_config):
    """Encoded image -> normalised float32 (S, S, 3): the shared eval transform."""
    image = preprocessing.eval_transform(preprocessing.decode_image(image_bytes), model_config)
    size = model_config.eval_image_size
    image.set_shape([size, size, 3])
    return image

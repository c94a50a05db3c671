"""Training augmentation (the student's input noise) and the shared eval transform.

Train: Inception-style random crop (reference `_decode_and_random_crop`: 8-100% of the
area, aspect 3/4-4/3, decoding only the cropped window of a JPEG), bicubic resize to the
model's train size, random horizontal flip, the reference's RandAugment (student.randaugment),
as uint8 pixels.
Eval: the centre crop and resize of `models.preprocessing.eval_transform`, the one the
teacher and labeling job use, as float32 pixels.
Neither normalises: the student's compiled step does (student.trainer), so the host
pipeline and the host-to-device feed carry pixels, a quarter of the bytes for training.

Every random choice is a pure function of a per-example seed (stateless ops), derived by
the input pipeline from the example's position in the stream. The same example at the
same position gets the same augmentation in any process, which is what lets a resumed run
reproduce an uninterrupted one, and keeps augmentation independent of tf.data threading.
"""

import tensorflow as tf

from models import preprocessing
from models.configs import SMALL_NAMES
from student.randaugment import CUTOUT_CONST, TRANSLATE_CONST, RandAugment

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 10

# RandAugment's translate/cutout constants are absolute pixels, chosen by the reference
# for its 160-320 px images; the paper's members use them unchanged.
REFERENCE_IMAGE_SIZE = 224


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
    """Encoded image + per-example seed -> uint8 (S, S, 3) pixels at the train size.

    The cast to uint8 is exact: the pixels are rounded and clipped to 0..255 before
    RandAugment, whose ops keep them integral in that range. The trainer normalises them.

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
    return tf.cast(image, tf.uint8)


def make_randaugment(model_config):
    """The reference's RandAugment for a model size, or None when its magnitude or layer count is 0.

    Deviation for the small test/demo members (32 and 64 px): their translate and cutout
    constants are scaled by train_image_size / 224, as their crop padding is, because at
    32 px the reference's 100 px translation would move the whole image out of the frame
    and its 80 px cutout square would cover it.
    """
    if not model_config.randaugment_magnitude or not model_config.randaugment_layers:
        return None
    scale = model_config.train_image_size / REFERENCE_IMAGE_SIZE if model_config.name in SMALL_NAMES else 1.0
    return RandAugment(model_config.randaugment_layers, model_config.randaugment_magnitude,
                       translate_const=TRANSLATE_CONST * scale, cutout_const=CUTOUT_CONST * scale)


def eval_transform(image_bytes, model_config):
    """Encoded image -> float32 (S, S, 3) pixels in 0..255: the shared eval transform before its
    normalisation, which the trainer's eval step applies.

    Not uint8 as in training: the bicubic resize gives non-integral values, and rounding them
    would change the eval numbers against the teacher's and labeling job's transform.
    """
    image = preprocessing.center_crop_and_resize(preprocessing.decode_image(image_bytes),
                                                 model_config.eval_image_size, model_config.crop_padding)
    size = model_config.eval_image_size
    image.set_shape([size, size, 3])
    return image

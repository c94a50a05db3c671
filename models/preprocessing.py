"""The eval transform and input normalisation, shared by teacher, labeling job and student.

This is the one place the eval transform exists: the teacher's serving signature, the
labeling job and the student's eval input all call `eval_transform`, and the values it
depends on (image size, crop padding, mean/std) are written into `teacher.json`.

Follows the reference's resnet_preprocessing._decode_and_center_crop: centre-crop a
square of side `image_size / (image_size + crop_padding) * shorter_side`, then a bicubic
resize to `image_size`. Works eagerly and inside tf.data / tf.function.
"""

import tensorflow as tf

CROP_PADDING = 32  # the reference's; each ModelConfig carries its own (`crop_padding`)


def decode_image(image_bytes):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 (H, W, 3); the first frame of animations."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def center_crop_and_resize(image, image_size, crop_padding=CROP_PADDING):
    """Centre crop + bicubic resize of an image (H, W, C) or a same-size batch (N, H, W, C).

    Any numeric dtype in, float32 out, on the input's 0-255 scale (bicubic may overshoot
    slightly; the result is clipped to [0, 255]).
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (3, 4):
        raise ValueError(f"center_crop_and_resize expects one (H, W, C) image or an (N, H, W, C) batch, "
                         f"got shape {image.shape}.")
    shape = tf.shape(image)
    height, width = shape[-3], shape[-2]
    crop_fraction = image_size / (image_size + crop_padding)
    crop_size = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    crop_size = tf.maximum(crop_size, 1)
    offset_height = (height - crop_size + 1) // 2
    offset_width = (width - crop_size + 1) // 2
    image = tf.image.crop_to_bounding_box(image, offset_height, offset_width, crop_size, crop_size)
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def normalize(images, mean_rgb, stddev_rgb):
    """(x - mean) / stddev per channel, on 0-255 pixel values, as the reference's model_fn."""
    images = tf.cast(images, tf.float32)
    return (images - tf.constant(mean_rgb, tf.float32)) / tf.constant(stddev_rgb, tf.float32)


def eval_transform(image, cfg):
    """Decoded uint8 image (H, W, 3) or batch (N, H, W, 3) -> normalised float32 model input."""
    image = center_crop_and_resize(image, cfg.eval_image_size, cfg.crop_padding)
    return normalize(image, cfg.mean_rgb, cfg.stddev_rgb)

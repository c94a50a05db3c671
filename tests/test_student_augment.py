"""Training augmentation: Inception crop, flip, seeded RandAugment; and the shared eval transform.

Both give pixels; the trainer normalises them (tests/test_student_train.py)."""

import numpy as np
import pytest
import tensorflow as tf

import models
from models import preprocessing
from student import augment
from test_student_fixtures import class_image, encode

CONFIG = models.config("resnet_rs_tiny")


def seed(value):
    return tf.constant([7, value], tf.int64)


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_train_transform_gives_the_train_size_and_depends_only_on_the_seed(image_format):
    image_bytes = encode(class_image(1, 3, np.random.default_rng(0), size=64), image_format)
    randaugment = augment.make_randaugment(CONFIG)
    first = augment.train_transform(image_bytes, seed(1), CONFIG, randaugment).numpy()
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8  # pixels: a quarter of float32's bytes
    np.testing.assert_array_equal(first, augment.train_transform(image_bytes, seed(1), CONFIG, randaugment))
    other = augment.train_transform(image_bytes, seed(2), CONFIG, randaugment).numpy()
    assert np.abs(first.astype(np.float32) - other).mean() > 0.5  # in pixels; uint8 subtraction would wrap
    # Inside a parallel tf.data map the same seed still gives the same image.
    dataset = tf.data.Dataset.from_tensors(image_bytes).repeat(4).map(
        lambda data: augment.train_transform(data, seed(1), CONFIG, randaugment), num_parallel_calls=4)
    for mapped in dataset:
        np.testing.assert_array_equal(mapped.numpy(), first)


def test_random_crop_samples_inception_style_windows():
    image_bytes = encode(np.zeros((100, 80, 3), np.uint8))
    areas = []
    for index in range(40):
        crop = augment.random_crop(image_bytes, seed(index)).numpy()
        height, width, _ = crop.shape
        areas.append(height * width / 8000)
        assert 0.5 <= width / height <= 2.0  # 3/4..4/3 before clipping to the image
    assert min(areas) >= 0.079 and max(areas) <= 1.0 and np.std(areas) > 0.05


@pytest.mark.parametrize("name, magnitude, translate_const, cutout_const", [
    ("resnet_rs_50", 10, 100, 40), ("resnet_rs_152", 15, 100, 40), ("resnet_rs_420", 15, 100, 40),
    ("resnet_rs_tiny", 10, 100 * 32 / 224, 40 * 32 / 224), ("resnet_rs_small", 10, 100 * 64 / 224, 40 * 64 / 224)])
def test_randaugment_keeps_the_references_pixel_constants_except_on_small_members(name, magnitude, translate_const,
                                                                                   cutout_const):
    layer = augment.make_randaugment(models.config(name))
    assert (layer.num_layers, layer.magnitude) == (2, magnitude)
    assert layer.translate_const == pytest.approx(translate_const)
    assert layer.cutout_const == pytest.approx(cutout_const)
    assert augment.make_randaugment(models.config(name, randaugment_layers=0)) is None
    assert augment.make_randaugment(models.config(name, randaugment_magnitude=0)) is None


def test_train_transform_as_uint8_loses_nothing():
    # Before RandAugment the pixels are rounded and clipped, and its ops keep them integral.
    image_bytes = encode(class_image(2, 3, np.random.default_rng(2), size=64), "jpeg")
    randaugment = augment.make_randaugment(CONFIG)
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed(3), 3))
    image = tf.image.resize(augment.random_crop(image_bytes, crop_seed), [32, 32], method="bicubic")
    image = tf.round(tf.clip_by_value(tf.image.stateless_random_flip_left_right(image, flip_seed), 0.0, 255.0))
    as_float = randaugment.augment(image, augment_seed).numpy()
    np.testing.assert_array_equal(augment.train_transform(image_bytes, seed(3), CONFIG, randaugment), as_float)


def test_eval_transform_is_the_shared_one_up_to_its_normalisation():
    image = class_image(0, 3, np.random.default_rng(1), size=48)
    image_bytes = encode(image, "png")
    pixels = augment.eval_transform(image_bytes, CONFIG).numpy()
    # float32 pixels, not uint8: the bicubic resize is not integral and rounding would change eval.
    assert pixels.dtype == np.float32 and pixels.min() >= 0.0 and pixels.max() <= 255.0
    assert not np.array_equal(pixels, np.round(pixels))
    expected = preprocessing.eval_transform(image, CONFIG).numpy()
    normalised = preprocessing.normalize(pixels, CONFIG.mean_rgb, CONFIG.stddev_rgb).numpy()
    np.testing.assert_allclose(normalised, expected, atol=1e-5)

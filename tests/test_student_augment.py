"""Training augmentation: Inception crop, flip, seeded RandAugment; and the shared eval transform."""

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
    assert first.shape == (32, 32, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, augment.train_transform(image_bytes, seed(1), CONFIG, randaugment))
    assert np.abs(first - augment.train_transform(image_bytes, seed(2), CONFIG, randaugment).numpy()).mean() > 0.01
    # Inside a parallel tf.data map (where Keras layers normally draw from a shared seed
    # variable) the same seed still gives the same image.
    dataset = tf.data.Dataset.from_tensors(image_bytes).repeat(4).map(
        lambda data: augment.train_transform(data, seed(1), CONFIG, randaugment), num_parallel_calls=4)
    for mapped in dataset:
        np.testing.assert_allclose(mapped.numpy(), first, atol=1e-4)


def test_random_crop_samples_inception_style_windows():
    image_bytes = encode(np.zeros((100, 80, 3), np.uint8))
    areas = []
    for index in range(40):
        crop = augment.random_crop(image_bytes, seed(index)).numpy()
        height, width, _ = crop.shape
        areas.append(height * width / 8000)
        assert 0.5 <= width / height <= 2.0  # 3/4..4/3 before clipping to the image
    assert min(areas) >= 0.079 and max(areas) <= 1.0 and np.std(areas) > 0.05


def test_randaugment_uses_the_papers_geometric_ranges():
    layer = augment.SeededRandAugment(magnitude=15, num_layers=2)
    assert layer.num_ops == 2 and layer.factor[1] == pytest.approx(0.5)  # Keras' default factor <-> magnitude 15
    assert layer.random_rotation.factor[1] * 360 == pytest.approx(45.0)  # 30 degrees * 15 / 10
    assert layer.random_shear.x_factor[1] == pytest.approx(0.45)
    assert layer.random_translation.height_upper == pytest.approx(100 / 224 * 1.5)
    assert augment.make_randaugment(models.config("resnet_rs_tiny", randaugment_layers=0)) is None
    with pytest.raises(RuntimeError, match="augment"):
        layer(np.zeros((8, 8, 3), np.float32), training=True)


def test_eval_transform_is_the_shared_one():
    image = class_image(0, 3, np.random.default_rng(1), size=48)
    image_bytes = encode(image, "png")
    expected = preprocessing.eval_transform(image, CONFIG).numpy()
    np.testing.assert_allclose(augment.eval_transform(image_bytes, CONFIG).numpy(), expected, atol=1e-5)

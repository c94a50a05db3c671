"""The shared eval transform: geometry, normalisation, and eager == tf.data."""

import numpy as np
import pytest
import tensorflow as tf

import models
from models import preprocessing


def _two_tone(height, width):
    """Left third red, the rest blue: tells whether the crop is centred."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 3, 0] = 255
    image[:, width // 3:, 2] = 255
    return image


def test_center_crop_keeps_the_centre_and_resizes_to_the_target():
    out = preprocessing.center_crop_and_resize(_two_tone(120, 300), 64).numpy()
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    # The crop is a 120*64/96 = 80 px square around column 150: all of it is blue.
    assert out[..., 2].min() > 250 and out[..., 0].max() < 5


def test_crop_fraction_follows_the_reference_padding():
    image = np.arange(96 * 96, dtype=np.float32).reshape(96, 96, 1).repeat(3, axis=2)
    # image_size 64 with padding 32 crops 64/96 of the side: a 64 px square, no resize.
    out = preprocessing.center_crop_and_resize(image.astype(np.uint16), 64, crop_padding=32)
    np.testing.assert_allclose(out[..., 0], np.clip(image[16:80, 16:80, 0], 0, 255), atol=1e-3)


def test_normalize_uses_the_model_mean_and_stddev():
    cfg = models.config("resnet_rs_50")
    pixel = np.array(cfg.mean_rgb, np.float32).reshape(1, 1, 3) + np.array(cfg.stddev_rgb, np.float32)
    np.testing.assert_allclose(preprocessing.normalize(pixel, cfg.mean_rgb, cfg.stddev_rgb), 1.0, rtol=1e-6)


def test_eval_transform_is_the_same_eagerly_and_inside_tf_data():
    cfg = models.config("resnet_rs_tiny")
    images = [np.random.default_rng(i).integers(0, 256, size=shape, dtype=np.uint8)
              for i, shape in enumerate([(50, 70, 3), (90, 40, 3), (33, 33, 3)])]
    eager = [preprocessing.eval_transform(image, cfg).numpy() for image in images]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    in_graph = [x.numpy() for x in dataset.map(lambda x: preprocessing.eval_transform(x, cfg))]
    for a, b in zip(eager, in_graph):
        assert a.shape == (32, 32, 3)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_same_size_batch_gives_the_per_image_results():
    cfg = models.config("resnet_rs_tiny")
    batch = np.random.default_rng(5).integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    together = preprocessing.eval_transform(batch, cfg).numpy()
    for image, result in zip(batch, together):
        np.testing.assert_allclose(preprocessing.eval_transform(image, cfg), result, atol=1e-5)


def test_wrong_rank_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="one \\(H, W, C\\) image or an \\(N, H, W, C\\) batch"):
        preprocessing.center_crop_and_resize(np.zeros((8, 8), np.uint8), 4)

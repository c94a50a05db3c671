"""The student's RandAugment against the reference's outputs and its definitions.

Reference: tensorflow/tpu models/official/efficientnet/autoaugment.py. The golden tests
compare with outputs of that code, run (tests/fixtures/randaugment_golden.md); the others
compute expected values independently (numpy, or by hand), exactly where numpy repeats the
same float32 operations, with stated tolerances elsewhere.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from student import randaugment as ra

MAGNITUDES = (10, 15)
SEED = tf.constant([3, 5], tf.int64)


def random_image(size, seed=0, low=0, high=256):
    height, width = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).integers(low, high, (height, width, 3)).astype(np.uint8)


def apply(name, image, magnitude, seed=SEED, **constants):
    augmenter = ra.RandAugment(1, magnitude, **constants)
    return augmenter.apply_op(tf.constant(image), tf.constant(ra.OP_NAMES.index(name)), seed).numpy()


def seeds(count):
    return [tf.constant([11, index], tf.int64) for index in range(count)]


def test_level_to_argument_at_the_papers_magnitudes():
    expected = {  # m=10, m=15
        ra.rotate_degrees: (30.0, 45.0), ra.shear_level: (0.3, 0.45), ra.translate_pixels: (100.0, 150.0),
        ra.enhance_factor: (1.9, 2.8), ra.posterize_bits: (4, 6), ra.solarize_threshold: (256, 384),
        ra.solarize_addition: (110, 165), ra.cutout_pad_size: (40, 60)}
    for function, values in expected.items():
        assert [function(m) for m in MAGNITUDES] == pytest.approx(list(values), abs=1e-9), function.__name__
    with pytest.raises(ValueError, match="magnitude"):
        ra.RandAugment(2, 25)


@pytest.mark.parametrize("magnitude, mask", [(10, 0xF0), (15, 0xFC)])  # 4 and 6 bits kept
def test_posterize_keeps_the_top_bits(magnitude, mask):
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    np.testing.assert_array_equal(apply("Posterize", image, magnitude), image & mask)


with np.load(Path(__file__).parent / "fixtures" / "randaugment_golden.npz") as _npz:
    GOLDEN = dict(_npz)
GOLDEN_INDEX = json.loads(str(GOLDEN["index_json"]))
GOLDEN_CASES = [case for case in GOLDEN_INDEX["cases"] if "op" in case]
# Ops that blend in float32 and truncate: the reference's own float rounding may differ
# by one grey level across CPUs (AVX2 vs AVX-512, FMA contraction), so 1 level is allowed.
FLOAT_BLEND_OPS = {"Color", "Contrast", "Brightness", "Sharpness", "AutoContrast"}
GEOMETRIC_OPS = {"Rotate": ra.rotate, "ShearX": ra.shear_x, "ShearY": ra.shear_y,
                 "TranslateX": ra.translate_x, "TranslateY": ra.translate_y}


def golden_input(size):
    """The fixture's input: per-channel ramps (R along x on 10..240, G along y on 0..255,
    B along the diagonal on 40..200) plus RandomState(0) noise in -40..40, clipped to each
    channel's range, so every op (AutoContrast included) changes pixels."""
    lows, highs = np.array([10, 0, 40]), np.array([240, 255, 200])
    y, x = np.mgrid[0:size, 0:size]
    base = lows + (highs - lows) * np.stack([x, y, (x + y) // 2], -1) // (size - 1)
    noise = np.random.RandomState(0).randint(-40, 41, (size, size, 3))
    return np.clip(base + noise, lows, highs).astype(np.uint8)


def sample(image, size):
    """What the fixture keeps: 32 px whole, larger images every `stride`-th row and column."""
    stride = GOLDEN_INDEX["stride"]
    return image if size == 32 else image[::stride, ::stride]


def test_golden_inputs_are_regenerated_exactly():
    for case in GOLDEN_INDEX["cases"]:
        if "op" not in case:
            image = golden_input(case["size"])
            assert hashlib.sha256(image.tobytes()).hexdigest() == case["sha256"]
            np.testing.assert_array_equal(sample(image, case["size"]), GOLDEN[case["key"]])


def test_the_reference_run_solarizes_with_a_threshold_wrapped_to_uint8():
    # Threshold int((m/10)*256) = 128, 256, 384 became uint8 128, 0, 128 in the reference.
    image = GOLDEN["input_s32"]
    np.testing.assert_array_equal(GOLDEN["Solarize_m5_s32"], np.where(image < 128, image, 255 - image))
    np.testing.assert_array_equal(GOLDEN["Solarize_m10_s32"], 255 - image)
    np.testing.assert_array_equal(GOLDEN["Solarize_m15_s32"], GOLDEN["Solarize_m5_s32"])


def project_op(case, image):
    """The project's op for a fixture case: signed and cutout ops with the reference's drawn values."""
    if case["op"] in GEOMETRIC_OPS:
        return GEOMETRIC_OPS[case["op"]](tf.constant(image), case["argument"]).numpy()
    if case["op"] == "Cutout":
        return ra.cutout(tf.constant(image), case["argument"], case["center_y"], case["center_x"]).numpy()
    return apply(case["op"], image, case["magnitude"])


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[case["key"] for case in GOLDEN_CASES])
def test_op_matches_the_reference_run(case):
    size = case["size"]
    result = project_op(case, golden_input(size))
    expected, expected_histogram = GOLDEN[case["key"]], GOLDEN[case["key"] + "_hist"].astype(np.int64)
    histogram = np.stack([np.bincount(result[..., c].ravel(), minlength=256) for c in range(3)])
    if case["op"] not in FLOAT_BLEND_OPS:
        np.testing.assert_array_equal(sample(result, size), expected)
        np.testing.assert_array_equal(histogram, expected_histogram)
        assert hashlib.sha256(result.tobytes()).hexdigest() == case["sha256"]  # every pixel
        return
    assert np.abs(sample(result, size).astype(int) - expected).max() <= 1
    # Unsampled pixels: if every pixel is within 1 level, a count at or below v on one side
    # is at most the count at or below v + 1 on the other.
    cumulative, expected_cumulative = np.cumsum(histogram, 1), np.cumsum(expected_histogram, 1)
    assert np.all(cumulative[:, :-1] <= expected_cumulative[:, 1:])
    assert np.all(expected_cumulative[:, :-1] <= cumulative[:, 1:])


@pytest.mark.parametrize("magnitude, addition", [(10, 110), (15, 165)])
def test_solarize_add_adds_below_128_and_clips(magnitude, addition):
    image = random_image(8)
    expected = np.where(image < 128, np.minimum(image.astype(int) + addition, 255), image)
    np.testing.assert_array_equal(apply("SolarizeAdd", image, magnitude), expected)


def test_invert():
    image = random_image(8)
    np.testing.assert_array_equal(apply("Invert", image, 10), 255 - image)


def test_auto_contrast_stretches_each_channel_and_leaves_flat_ones():
    image = random_image(8)
    image[..., 0] = 50 + image[..., 0] % 52  # range 50..101 (both reached below): scale 5, exact
    image[0, 0, 0], image[0, 1, 0] = 50, 101
    image[..., 1] = 77  # flat: unchanged
    image[0, 0, 2], image[0, 1, 2] = 0, 255  # full range: unchanged
    result = apply("AutoContrast", image, 10)
    np.testing.assert_array_equal(result[..., 0], (image[..., 0].astype(int) - 50) * 5)
    np.testing.assert_array_equal(result[..., 1:], image[..., 1:])


def pil_equalize_channel(channel):
    """PIL ImageOps.equalize for one channel, written from PIL's definition."""
    histogram = np.bincount(channel.ravel(), minlength=256)
    nonzero = histogram[histogram > 0]
    step = (nonzero.sum() - nonzero[-1]) // 255
    if step == 0:
        return channel
    lut = (step // 2 + np.concatenate([[0], np.cumsum(histogram)[:-1]])) // step
    return np.clip(lut, 0, 255)[channel].astype(np.uint8)


def test_equalize_on_a_known_histogram():
    # 1024 pixels, 256 each of 0, 64, 128, 192: step = (1024 - 256) // 255 = 3, and value v
    # maps to (pixels below v + 1) // 3: 0 -> 0, 64 -> 257 // 3 = 85, 128 -> 171, 192 -> 256 -> 255.
    channel = np.repeat([0, 64, 128, 192], 256).reshape(32, 32).astype(np.uint8)
    image = np.stack([channel, np.full_like(channel, 9), random_image(32)[..., 2]], axis=-1)
    result = apply("Equalize", image, 10)
    np.testing.assert_array_equal(result[..., 0], np.repeat([0, 85, 171, 255], 256).reshape(32, 32))
    np.testing.assert_array_equal(result[..., 1], 9)  # one value: step 0, unchanged
    np.testing.assert_array_equal(result[..., 2], pil_equalize_channel(image[..., 2]))
    # The reference's fixed-width histogram puts value v in bin v, as the bincount used here.
    np.testing.assert_array_equal(tf.histogram_fixed_width(tf.range(256), [0, 255], nbins=256), np.ones(256))


def float32_blend(degenerate, image, factor):
    """The reference's blend, repeating its float32 operations in numpy."""
    degenerate = degenerate.astype(np.float32)
    blended = degenerate + np.float32(factor) * (image.astype(np.float32) - degenerate)
    return np.clip(blended, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("magnitude, factor", [(10, 1.9), (15, 2.8)])
def test_brightness_scales_by_the_factor(magnitude, factor):
    image = random_image(8)
    result = apply("Brightness", image, magnitude)
    np.testing.assert_array_equal(result, float32_blend(np.zeros_like(image), image, factor))
    assert result[image == 100][0] == (190 if magnitude == 10 else 255)


@pytest.mark.parametrize("magnitude, factor", [(10, 1.9), (15, 2.8)])
def test_color_extrapolates_away_from_grey(magnitude, factor):
    image = random_image(8)
    # The reference's greyscale is TF's rgb_to_grayscale: the luma weights, truncated.
    grey = tf.image.rgb_to_grayscale(image).numpy()
    luma = image.astype(float) @ [0.2989, 0.5870, 0.1140]
    assert np.abs(grey[..., 0] - luma).max() <= 1.0
    np.testing.assert_array_equal(apply("Color", image, magnitude), float32_blend(np.repeat(grey, 3, -1), image,
                                                                                  factor))


@pytest.mark.parametrize("magnitude, factor", [(10, 1.9), (15, 2.8)])
@pytest.mark.parametrize("size, level", [(32, 4), (224, 196), (320, 255)])
def test_contrast_blends_from_the_references_pixel_count_mean(magnitude, factor, size, level):
    # Reference "mean": sum(histogram) / 256 = pixel count / 256, clipped to 255.
    image = random_image(size)
    expected = float32_blend(np.full_like(image, level), image, factor)
    np.testing.assert_array_equal(apply("Contrast", image, magnitude), expected)


@pytest.mark.parametrize("magnitude, factor", [(10, 1.9), (15, 2.8)])
def test_sharpness_extrapolates_away_from_the_smoothed_image(magnitude, factor):
    image = np.full((7, 7, 3), 100, np.uint8)
    image[3, 3] = 230
    result = apply("Sharpness", image, magnitude).astype(int)
    # Smoothing with [[1,1,1],[1,5,1],[1,1,1]]/13: the spike -> 150, its neighbours -> 110,
    # the rest of the interior -> 100; the 1-pixel border keeps the original.
    smoothed = np.full((7, 7), 100.0)
    smoothed[2:5, 2:5] = 110.0
    smoothed[3, 3] = 150.0
    expected = np.clip(smoothed + factor * (image[..., 0] - smoothed), 0, 255)
    assert result[3, 3, 0] == 255 and result[2, 3, 0] == pytest.approx(110 - factor * 10, abs=1)
    # Float32 smoothing of integer sums can truncate one below, moved by (factor - 1): within 2.
    np.testing.assert_allclose(result, np.repeat(expected[..., None], 3, -1), atol=2)
    border = np.ones((7, 7), bool)
    border[1:-1, 1:-1] = False
    np.testing.assert_array_equal(result[border], image[border])


def nearest_sample(image, source_x, source_y):
    """Output pixels from the nearest input pixel (C++ std::round), 128 where it is outside."""
    column = (np.sign(source_x) * np.floor(np.abs(source_x) + 0.5)).astype(int)
    row = (np.sign(source_y) * np.floor(np.abs(source_y) + 0.5)).astype(int)
    height, width = image.shape[:2]
    inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
    result = np.full_like(image, ra.FILL_VALUE)
    result[inside] = image[row[inside], column[inside]]
    return result


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name, axis", [("TranslateX", 1), ("TranslateY", 0)])
def test_translate_moves_content_by_the_references_pixels(magnitude, name, axis):
    image = random_image(224, high=128)  # no 128 in the content, so the fill is recognisable
    pixels = int(ra.translate_pixels(magnitude))  # 100 or 150
    shifted_left = np.full_like(image, 128)  # output x takes input x + pixels (reference dx = -pixels)
    shifted_right = np.full_like(image, 128)
    front = [slice(None)] * 3
    back = [slice(None)] * 3
    front[axis], back[axis] = slice(0, 224 - pixels), slice(pixels, 224)
    shifted_left[tuple(front)] = image[tuple(back)]
    shifted_right[tuple(back)] = image[tuple(front)]
    function = ra.translate_x if axis == 1 else ra.translate_y
    np.testing.assert_array_equal(function(tf.constant(image), float(pixels)), shifted_left)
    np.testing.assert_array_equal(function(tf.constant(image), -float(pixels)), shifted_right)
    results = [apply(name, image, magnitude, seed) for seed in seeds(12)]  # the op's random sign
    assert all(np.array_equal(r, shifted_left) or np.array_equal(r, shifted_right) for r in results)
    assert any(np.array_equal(r, shifted_left) for r in results)
    assert any(np.array_equal(r, shifted_right) for r in results)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear_samples_the_references_matrix(magnitude, name):
    # ShearX [1, level, 0, 0, 1, 0, 0, 0]: output (x, y) takes input (x + level * y, y);
    # ShearY [1, 0, 0, level, 1, 0, 0, 0]: input (x, level * x + y). Float32, as the kernel.
    image = random_image((40, 48), high=128)
    y, x = np.mgrid[0:40, 0:48].astype(np.float32)
    expected = {}
    for sign in (1, -1):
        level = np.float32(sign * ra.shear_level(magnitude))
        source = (x + level * y, y) if name == "ShearX" else (x, level * x + y)
        expected[sign] = nearest_sample(image, *source)
        function = ra.shear_x if name == "ShearX" else ra.shear_y
        np.testing.assert_array_equal(function(tf.constant(image), float(level)), expected[sign])
    results = [apply(name, image, magnitude, seed) for seed in seeds(12)]
    signs = {sign for r in results for sign in (1, -1) if np.array_equal(r, expected[sign])}
    assert signs == {1, -1} and all(any(np.array_equal(r, e) for e in expected.values()) for r in results)


def numpy_rotation(image, degrees):
    """Input position of each output pixel for a rotation about the centre, in float64."""
    height, width = image.shape[:2]
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    radians = np.deg2rad(degrees)
    source_x = center_x + np.cos(radians) * (x - center_x) - np.sin(radians) * (y - center_y)
    source_y = center_y + np.sin(radians) * (x - center_x) + np.cos(radians) * (y - center_y)
    return source_x, source_y


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_rotate_by_the_references_angle_about_the_centre(magnitude):
    image = random_image((50, 60), high=128)
    degrees = ra.rotate_degrees(magnitude)  # 30 or 45
    results = [apply("Rotate", image, magnitude, seed) for seed in seeds(12)]
    matched_signs = set()
    for sign in (1, -1):
        source_x, source_y = numpy_rotation(image, sign * degrees)
        expected = nearest_sample(image, source_x, source_y)
        # Compare where float32 and float64 cannot round differently (away from half-pixels).
        clear = (np.abs(source_x % 1 - 0.5) > 1e-3) & (np.abs(source_y % 1 - 0.5) > 1e-3)
        assert clear.mean() > 0.95  # 45 degrees puts the diagonals through half-pixels
        actual = ra.rotate(tf.constant(image), sign * degrees).numpy()
        np.testing.assert_array_equal(actual[clear], expected[clear])
        assert np.mean(actual == 128) > 0.05  # the corners are filled
        matched_signs |= {sign for r in results if np.array_equal(r, actual)}
    assert matched_signs == {1, -1}
    # Direction: a positive angle turns the content counterclockwise as displayed.
    square = random_image(9)
    np.testing.assert_array_equal(ra.rotate(tf.constant(square), 90.0), np.rot90(square))


@pytest.mark.parametrize("magnitude, side", [(10, 80), (15, 120)])
def test_cutout_fills_a_clipped_square_of_twice_the_pad_with_grey(magnitude, side):
    image = random_image(224, high=128)
    pad = ra.cutout_pad_size(magnitude)
    result = ra.cutout(tf.constant(image), pad, 100, 120).numpy()
    expected = image.copy()
    expected[100 - pad:100 + pad, 120 - pad:120 + pad] = 128
    np.testing.assert_array_equal(result, expected)
    corner = ra.cutout(tf.constant(image), pad, 5, 220).numpy()  # clipped at the top right
    assert np.array_equal(np.argwhere(corner[..., 0] == 128).max(0) + 1, [5 + pad, 224])
    sides = []
    for seed in seeds(12):
        rows, columns = np.nonzero(apply("Cutout", image, magnitude, seed)[..., 0] == 128)
        height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
        assert len(rows) == height * width and pad <= min(height, width) and max(height, width) <= side
        sides.append(max(height, width))
    assert side in sides  # unclipped squares are side x side
    assert len({(r.tobytes()) for r in [apply("Cutout", image, magnitude, s) for s in seeds(4)]}) > 1


def test_every_op_is_chosen_uniformly_and_always_applied():
    augmenter = ra.RandAugment(2, 10)
    counts = np.zeros(16, int)
    for seed in seeds(400):
        for op_index, _ in augmenter.layer_choices(seed):
            counts[int(op_index)] += 1
    # 800 draws, 50 expected per op; 25..80 holds with overwhelming probability.
    assert counts.min() >= 25 and counts.max() <= 80
    # The reference draws prob ~ U(0.2, 0.8) but never uses it: the chosen op always runs.
    one_layer = ra.RandAugment(1, 10)
    image = random_image(16)
    inverted = 0
    for seed in seeds(200):
        (op_index, _), = one_layer.layer_choices(seed)
        if ra.OP_NAMES[int(op_index)] == "Invert":
            inverted += 1
            np.testing.assert_array_equal(one_layer.augment(tf.constant(image, tf.float32), seed), 255 - image)
    assert inverted >= 3
    # augment = the chosen ops in sequence, nothing skipped.
    for seed in seeds(6):
        step = tf.constant(image)
        for op_index, op_seed in augmenter.layer_choices(seed):
            step = augmenter.apply_op(step, op_index, op_seed)
        np.testing.assert_array_equal(augmenter.augment(tf.constant(image, tf.float32), seed), step)


def test_same_seed_same_image_inside_a_parallel_dataset_map():
    augmenter = ra.RandAugment(2, 15)
    image = tf.constant(random_image(64), tf.float32)
    eager = [augmenter.augment(image, seed).numpy() for seed in seeds(8)]
    assert all(e.dtype == np.float32 and e.shape == (64, 64, 3) for e in eager)
    assert all(0 <= e.min() and e.max() <= 255 and np.array_equal(e, np.round(e)) for e in eager)
    np.testing.assert_array_equal(augmenter.augment(image, seeds(1)[0]), eager[0])
    assert len({e.tobytes() for e in eager}) >= 7  # different seeds, different augmentations
    positions = tf.data.Dataset.range(8).repeat(3)
    mapped = positions.map(lambda i: augmenter.augment(image, tf.stack([tf.constant(11, tf.int64), i])),
                           num_parallel_calls=2)
    for index, result in enumerate(mapped):
        np.testing.assert_array_equal(result.numpy(), eager[index % 8])


def test_every_op_gives_the_same_pixels_in_a_graph_as_eagerly():
    augmenter = ra.RandAugment(1, 15)
    image = tf.constant(random_image(40, seed=3))
    graph_apply = tf.function(augmenter.apply_op)
    for op_index in range(len(ra.OP_NAMES)):
        index = tf.constant(op_index)
        np.testing.assert_array_equal(graph_apply(image, index, SEED), augmenter.apply_op(image, index, SEED),
                                      err_msg=ra.OP_NAMES[op_index])

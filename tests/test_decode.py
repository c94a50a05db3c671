"""pipeline.decode: colour-space normalisation, the size guard, stored bytes, rejections."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import png_header_claiming
from pipeline import decode

MAX_PIXELS = 10_000_000


def _encode(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _gradient(width=48, height=32):
    x = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    return np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 77, np.float32)], axis=-1).astype(np.uint8)


def test_rgb_png_passes_through_and_decodes_to_the_same_pixels():
    data = _encode(Image.fromarray(_gradient()), "PNG")
    pixels, stored, thumbnail = decode.decode(data, MAX_PIXELS)
    assert stored == data
    np.testing.assert_array_equal(pixels, _gradient())
    np.testing.assert_array_equal(tf.io.decode_image(stored, channels=3).numpy(), pixels)
    assert Image.open(io.BytesIO(thumbnail)).format == "JPEG"


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_colour_mode_becomes_rgb(mode):
    rgb = Image.fromarray(_gradient())
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = rgb.convert(mode)
    image_format = "JPEG" if mode == "CMYK" else "PNG"
    pixels, stored, _ = decode.decode(_encode(image, image_format), MAX_PIXELS)
    assert pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8
    # Whatever is stored decodes, with TF's decoder, to the pixels the teacher saw.
    np.testing.assert_allclose(tf.io.decode_image(stored, channels=3).numpy(), pixels,
                               atol=12 if mode == "CMYK" else 0)  # CMYK is re-encoded as JPEG


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    pixels, _, _ = decode.decode(_encode(Image.fromarray(ramp), "PNG"), MAX_PIXELS)
    assert pixels[..., 0].min() == 0 and pixels[..., 0].max() == 255
    assert len(np.unique(pixels[..., 0])) > 50  # clipping at 255 would leave a handful of values


def test_transparency_is_composited_over_white():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    pixels, _, _ = decode.decode(_encode(transparent, "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(pixels, 255)


def test_exif_rotation_is_applied_and_the_file_re_encoded():
    image = Image.fromarray(_gradient(48, 32))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    pixels, stored, _ = decode.decode(data, MAX_PIXELS)
    assert pixels.shape == (48, 32, 3)
    assert stored != data and tf.io.decode_image(stored, channels=3).shape == (48, 32, 3)


def test_max_side_downscales_what_is_stored_but_not_what_the_teacher_sees():
    data = _encode(Image.fromarray(_gradient(200, 100)), "JPEG", quality=95)
    pixels, stored, _ = decode.decode(data, MAX_PIXELS, max_side=50)
    assert pixels.shape == (100, 200, 3)
    assert Image.open(io.BytesIO(stored)).size == (50, 25) and Image.open(io.BytesIO(stored)).format == "JPEG"


@pytest.mark.parametrize("data, category", [
    (b"", "empty"),
    (b"GIF89a not really", "undecodable"),
    (b"plain text", "undecodable"),
    (png_header_claiming(30000, 30000), "too_many_pixels"),
])
def test_bad_bytes_are_rejected_with_a_reason(data, category):
    with pytest.raises(decode.ImageRejected, match=f"^{category}:"):
        decode.decode(data, MAX_PIXELS)


def test_size_guard_refuses_before_allocating_pixels():
    with pytest.raises(decode.ImageRejected, match="30000x30000 = 900000000 pixels > --max_pixels"):
        decode.decode(png_header_claiming(30000, 30000), MAX_PIXELS)


def test_truncated_jpeg_is_rejected():
    data = _encode(Image.fromarray(_gradient(300, 200)), "JPEG", quality=95)
    with pytest.raises(decode.ImageRejected, match="^undecodable:"):
        decode.decode(data[:len(data) // 2], MAX_PIXELS)


def test_prediction_skips_the_stored_bytes_and_the_thumbnail_and_sees_the_same_pixels():
    data = _encode(Image.fromarray(_gradient()), "PNG")
    pixels, stored, thumbnail = decode.decode(data, MAX_PIXELS)
    only_pixels = decode.decode(data, MAX_PIXELS, store=False, thumbnail=False)
    assert only_pixels[1] is None and only_pixels[2] is None
    assert np.array_equal(only_pixels[0], pixels)
    assert decode.decode(data, MAX_PIXELS, thumbnail=False)[1] == stored


def _truncated_idat_png(rows=12, height=24, width=32):
    """A well-framed PNG whose complete zlib stream holds only `rows` rows: Pillow fills the
    others with zeros, tf.io.decode_image refuses the file."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = np.random.default_rng(5).integers(1, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_png_tf_cannot_decode_is_stored_re_encoded_as_the_teacher_saw_it():
    data = _truncated_idat_png()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data, channels=3)
    pixels, stored, _ = decode.decode(data, MAX_PIXELS)
    assert not pixels[12:].any() and pixels[:12].all()  # Pillow's reading: missing rows are zeros
    assert stored != data
    np.testing.assert_array_equal(tf.io.decode_image(stored, channels=3).numpy(), pixels)


def test_a_jpeg_tf_reads_like_pillow_still_passes_through():
    data = _encode(Image.fromarray(_gradient(200, 100)), "JPEG", quality=95)
    pixels, stored, _ = decode.decode(data, MAX_PIXELS)
    assert stored == data
    # The student's default (fast) IDCT differs from Pillow's by rounding only.
    assert np.abs(tf.io.decode_image(stored, channels=3).numpy().astype(int) - pixels).mean() < 2


@pytest.mark.parametrize("image_format", ["TIFF", "ICO", "PPM", "TGA", "PCX"])
def test_formats_outside_the_allowed_five_are_refused_whatever_the_name(image_format):
    data = _encode(Image.fromarray(_gradient()), image_format)
    with pytest.raises(decode.ImageRejected, match="^undecodable: not a JPEG, PNG, GIF, BMP or WEBP image"):
        decode.decode(data, MAX_PIXELS)


def test_pillow_process_state_is_left_alone():
    # Importing and using the decoder must not switch off Pillow's bomb guard for the process.
    decode.decode(_encode(Image.fromarray(_gradient()), "PNG"), MAX_PIXELS)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's default


def test_max_pixels_above_pillows_own_limit_is_honoured():
    # 200M pixels: over Pillow's error limit (2 x 89.5M), under this --max_pixels. The header is
    # accepted (the fake image data then fails to decode), not refused as a bomb.
    with pytest.raises(decode.ImageRejected, match="^undecodable: .*truncated"):
        decode.decode(png_header_claiming(20000, 10000), 300_000_000)
    with pytest.raises(decode.ImageRejected, match="20000x10000 = 200000000 pixels > --max_pixels=100000000"):
        decode.decode(png_header_claiming(20000, 10000), 100_000_000)

"""Decode: raw input bytes -> RGB pixels for the teacher and the bytes kept in the records.

Decoding uses Pillow rather than `tf.io.decode_image` because Pillow reads an image's size
from its header before decoding it, which is what the size guard needs (a 30000x30000 PNG
is a few hundred KB on disk and 2.7 GB decoded), and because it exposes the colour mode so
CMYK, 16-bit, palette and alpha images can be normalised deliberately:
  L, 1, CMYK, YCbCr, LAB, HSV      -> RGB by Pillow's conversion
  I;16*, I (16/32-bit grayscale)   -> scaled to 8 bits (not clipped), then RGB
  RGBA, LA, P/PA with transparency -> composited over white, then RGB
  animations                       -> first frame; EXIF orientation is applied.

Formats: only JPEG, PNG, GIF, BMP and WebP are opened, whatever the file is named (Pillow
would otherwise parse any of its ~40 formats, TIFF and ICO included). The size guard is
this job's --max_pixels, checked on the header's size; Pillow's process-wide settings
(`Image.MAX_IMAGE_PIXELS`) are neither changed nor consulted when opening, so other code in
the worker keeps Pillow's own bomb limit.

Stored bytes: the original file passes through unchanged when it already is an 8-bit RGB or
grayscale JPEG or PNG with no EXIF rotation and no side above --max_side, AND TensorFlow's
decoder (the student's) reads it as exactly the pixels Pillow gave the teacher (for JPEG:
TF's accurate IDCT, which is libjpeg's and Pillow's; the student's default fast IDCT then
differs from it by rounding only). Pillow is more lenient than TF: it fills the missing rows
of a PNG whose compressed data ends early with zeros, where TF refuses the file. Such a
file, and anything else, is re-encoded from the normalised pixels (PNG for a file that
failed that check, and for lossless sources; JPEG quality 95 for other lossy sources),
downscaled to --max_side when set. So every record decodes with `tf.io.decode_image` (and
the student's crop) to what the teacher saw (up to --max_side, and JPEG's lossy re-encoding).
"""

import hashlib
import io
import struct

import apache_beam as beam
import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from models import preprocessing
from pipeline.elements import Rejection, StoredImage

REJECTED = "rejected"
THUMBNAIL_SIDE = 64
_PASS_THROUGH_FORMATS = {"JPEG", "PNG"}
_LOSSY_FORMATS = {"JPEG", "WEBP", "MPO"}
# What the student's decoder (tf.io.decode_image) reads too; Pillow plugin ids.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_HEADER_BYTES = 16  # what Pillow's format checks look at


class ImageRejected(Exception):
    """Raised inside decoding with a "category: detail" reason."""


def content_key(data):
    return hashlib.sha256(data).hexdigest()


def _open_allowed_format(data):
    """`Image.open` restricted to ALLOWED_FORMATS, reading only the header.

    `Image.open(formats=...)` would also apply Pillow's process-wide bomb limit (an error
    at 179M pixels, whatever --max_pixels says, with a message that names no size), so
    this opens through the same format registry and factories itself; the caller checks
    --max_pixels on the size. Returns None when no allowed format accepts the data.
    """
    Image.init()  # registers the format plugins; what Image.open does first
    prefix = data[:_HEADER_BYTES]
    for name in ALLOWED_FORMATS:
        if name not in Image.OPEN:  # e.g. a Pillow built without WebP
            continue
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str says why it looks like, but is not, this format
            continue
        try:
            return factory(io.BytesIO(data), None)
        except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open treats as "not this format"
            continue
    return None


def _open_checked(data, max_pixels):
    if not data:
        raise ImageRejected("empty: the file has no bytes")
    try:
        image = _open_allowed_format(data)
    except Exception as error:  # broken headers raise several types
        raise ImageRejected(f"undecodable: {type(error).__name__}: {error}") from error
    if image is None:
        raise ImageRejected(f"undecodable: not a {', '.join(ALLOWED_FORMATS[:-1])} or {ALLOWED_FORMATS[-1]} image "
                            "(other formats are not read, whatever the file is named)")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"too_many_pixels: {width}x{height} = {width * height} pixels > "
                            f"--max_pixels={max_pixels} (refused before decoding)")
    if width < 1 or height < 1:
        raise ImageRejected(f"undecodable: image has size {width}x{height}")
    return image


def _to_rgb(image):
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _encode(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _student_reads_the_same(data, source_format, pixels):
    """Whether TensorFlow decodes `data` (a JPEG or PNG) to exactly `pixels` (H, W, 3).

    JPEGs are compared through TF's accurate integer IDCT, the one libjpeg (and so Pillow)
    uses by default: equal pixels mean TF reads the same coefficients from the same bytes.
    The student decodes with TF's default fast IDCT, which differs from it by rounding only.
    """
    try:
        if source_format == "JPEG":
            decoded = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            decoded = preprocessing.decode_image(data)
    except (tf.errors.OpError, ValueError):
        return False
    return tuple(decoded.shape) == pixels.shape and np.array_equal(decoded.numpy(), pixels)


def decode(data, max_pixels, max_side=0):
    """(uint8 pixels (H, W, 3) the teacher sees, bytes to store, thumbnail JPEG bytes).

    Raises ImageRejected with a reason for anything that is not a usable image.
    """
    image = _open_checked(data, max_pixels)
    source_format = image.format
    try:
        image.seek(0)
        image.load()
        rotated = image.getexif().get(0x0112, 1) not in (0, 1)  # EXIF orientation tag
        original_mode = image.mode
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except Exception as error:  # truncated data, bad chunks, unsupported modes
        raise ImageRejected(f"undecodable: {type(error).__name__}: {error}") from error

    pixels = np.asarray(rgb, dtype=np.uint8)
    too_large = max_side and max(rgb.size) > max_side
    eligible = (source_format in _PASS_THROUGH_FORMATS and original_mode in ("RGB", "L") and not rotated
                and not too_large)
    if eligible and _student_reads_the_same(data, source_format, pixels):
        stored = data
    else:
        kept = rgb
        if too_large:
            kept = rgb.copy()
            kept.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        # An eligible file that TF reads differently (or not at all) is stored losslessly, so
        # the student still sees exactly the teacher's pixels.
        stored = (_encode(kept, "JPEG", quality=95) if source_format in _LOSSY_FORMATS and not eligible
                  else _encode(kept, "PNG", optimize=False))
    thumbnail = rgb.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC)
    return pixels, stored, _encode(thumbnail, "JPEG", quality=80)


class DecodeImages(beam.DoFn):
    """Candidate -> (StoredImage, pixels); undecodable inputs to the `rejected` output."""

    def __init__(self, max_pixels, max_side):
        self._max_pixels = max_pixels
        self._max_side = max_side
        self._decoded = beam.metrics.Metrics.counter("Decode", "decoded")
        self._rejected = beam.metrics.Metrics.counter("Decode", "rejected")
        self._bytes = beam.metrics.Metrics.distribution("Decode", "input_bytes")

    def process(self, candidate):
        self._bytes.update(len(candidate.data))
        try:
            pixels, stored, thumbnail = decode(candidate.data, self._max_pixels, self._max_side)
        except ImageRejected as rejection:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection(candidate.uri, str(rejection), "decode"))
            return
        self._decoded.inc()
        yield StoredImage(content_key(candidate.data), candidate.uri, stored, thumbnail), pixels

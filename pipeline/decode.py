"""Decode: raw input bytes -> RGB pixels for the teacher and the bytes kept in the records.

Decoding uses Pillow rather than `tf.io.decode_image` because Pillow reads an image's size
from its header before decoding it, which is what the size guard needs (a 30000x30000 PNG
is a few hundred KB on disk and 2.7 GB decoded), and because it exposes the colour mode so
CMYK, 16-bit, palette and alpha images can be normalised deliberately:
  L, 1, CMYK, YCbCr, LAB, HSV      -> RGB by Pillow's conversion
  I;16*, I (16/32-bit grayscale)   -> scaled to 8 bits (not clipped), then RGB
  RGBA, LA, P/PA with transparency -> composited over white, then RGB
  animations                       -> first frame; EXIF orientation is applied.

Stored bytes: the original file passes through unchanged when it already is an 8-bit RGB or
grayscale JPEG or PNG with no EXIF rotation and no side above --max_side; anything else is
re-encoded from the normalised pixels (JPEG quality 95 for lossy sources, PNG otherwise),
downscaled to --max_side when set. So every record decodes with `tf.io.decode_image` to
what the teacher saw (up to --max_side).
"""

import hashlib
import io

import apache_beam as beam
import numpy as np
from PIL import Image, ImageOps

from pipeline.elements import Rejection, StoredImage

REJECTED = "rejected"
THUMBNAIL_SIDE = 64
_PASS_THROUGH_FORMATS = {"JPEG", "PNG"}
_LOSSY_FORMATS = {"JPEG", "WEBP", "MPO"}
# The job's own --max_pixels check (below, on the header's size) replaces Pillow's global
# bomb limit, which would otherwise refuse at 179M pixels whatever the flag says and with a
# message that does not name the flag. Labeling workers run only this job.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(Exception):
    """Raised inside decoding with a "category: detail" reason."""


def content_key(data):
    return hashlib.sha256(data).hexdigest()


def _open_checked(data, max_pixels):
    if not data:
        raise ImageRejected("empty: the file has no bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as error:
        raise ImageRejected("undecodable: not a recognised image format") from error
    except Exception as error:  # broken headers raise several types
        raise ImageRejected(f"undecodable: {type(error).__name__}: {error}") from error
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
    if (source_format in _PASS_THROUGH_FORMATS and original_mode in ("RGB", "L") and not rotated
            and not too_large):
        stored = data
    else:
        kept = rgb
        if too_large:
            kept = rgb.copy()
            kept.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        stored = (_encode(kept, "JPEG", quality=95) if source_format in _LOSSY_FORMATS
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

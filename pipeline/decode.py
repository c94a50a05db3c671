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

import contextlib
import hashlib
import io
import struct
import threading

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps


REJECTED = "rejected"
THUMBNAIL_SIDE = 64
_PASS_THROUGH_FORMATS = {"JPEG", "PNG"}
_LOSSY_FORMATS = {"JPEG", "WEBP", "MPO"}
# What the student's decoder (tf.io.decode_image) reads too; Pillow plugin ids.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_HEADER_BYTES = 16  # what Pillow's format checks look at
# Per worker process: any 8-bit image up to the default --max_pixels (100 MP: 2.3 GB, or
# 2.7 GB with alpha) fits alone; 32-bit grayscale of that size is refused.
DEFAULT_DECODE_MEMORY_MB = 3072


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
    if image.mode.startswith("I;16"):
        # round(v * 255 / 65535) == round(v / 257), never a tie, so integers give the exact
        # result in 8 bytes per pixel where float64 arithmetic needed 24.
        pixels = np.asarray(image).astype(np.uint32)
        pixels += 128
        pixels //= 257
        image = Image.fromarray(pixels.astype(np.uint8), "L")
    elif image.mode == "I":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if pixels.max() > 255 else 1.0
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
    # The student's own ops, called as raw ops on a tensor: Python bytes handed to an image op
    # take TF's eager slow path (measured on a 2-core AMD EPYC Zen 3, a 24x24 PNG: 300 us a
    # check through tf.io.decode_image on bytes, about 140 us this way), and stage 2 checks
    # every stored image.
    # tf.io.decode_image(expand_animations=False) is this DecodeImage op plus a static shape.
    contents = tf.constant(data, tf.string)
    try:
        if source_format == "JPEG":
            decoded = tf.raw_ops.DecodeJpeg(contents=contents, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            decoded = tf.raw_ops.DecodeImage(contents=contents, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.OpError, ValueError):
        return False
    decoded = decoded.numpy()  # (an EagerTensor's .shape costs more than this copy on small images)
    if decoded.shape != pixels.shape:
        return False
    # Row blocks: one whole-image comparison would allocate another 3 bytes per pixel.
    rows = max(1, (1 << 22) // max(1, pixels.shape[1] * 3))
    return all(np.array_equal(decoded[top:top + rows], pixels[top:top + rows])
               for top in range(0, pixels.shape[0], rows))


def decode(data, max_pixels, max_side=0, memory=None, store=True, thumbnail=True):
    """(uint8 pixels (H, W, 3) the teacher sees, bytes to store, thumbnail JPEG bytes).

    `memory`: a DecodeMemory budget the decode reserves its estimated peak from (and waits
    for) between reading the header and decoding. Raises ImageRejected with a reason for
    anything that is not a usable image, including one that alone exceeds the budget.
    `store`, `thumbnail`: False skips that part (None in its place): prediction needs the
    pixels only; selection needs the stored bytes of the images it keeps; the report needs
    thumbnails of a few. Each part is a deterministic function of `data` and the flags.
    """
    image = _open_checked(data, max_pixels)
    if memory is None:
        return _decode_opened(image, data, max_side, store, thumbnail)
    with memory.reserve(decode_peak_bytes(image), f"{image.size[0]}x{image.size[1]} {image.mode}"):
        return _decode_opened(image, data, max_side, store, thumbnail)


def _decode_opened(image, data, max_side, store=True, thumbnail=True):
    source_format = image.format
    try:
        image.seek(0)
        image.load()
        rotated = image.getexif().get(0x0112, 1) not in (0, 1)  # EXIF orientation tag
        original_mode = image.mode
        ImageOps.exif_transpose(image, in_place=True)  # a copy would cost 4 more bytes per pixel
        rgb = _to_rgb(image)
    except Exception as error:  # truncated data, bad chunks, unsupported modes
        raise ImageRejected(f"undecodable: {type(error).__name__}: {error}") from error

    pixels = np.asarray(rgb, dtype=np.uint8)
    small = _encode(_thumbnail(rgb), "JPEG", quality=80) if thumbnail else None
    if not store:
        return pixels, None, small
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
    return pixels, stored, small


def _thumbnail(rgb):
    """What Image.thumbnail makes, without its full-size copy of the image."""
    width, height = rgb.size
    scale = min(1.0, THUMBNAIL_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0) if scale < 1 else rgb


# Peak bytes per pixel of `decode` above its input, measured (peak RSS, 3000x3000 noise
# images, Pillow 12.3, TF 2.21, AMD EPYC): RGB PNG 19.0, WebP 18.7, JPEG 13.4, GIF 11.0,
# BMP 10.0; RGBA PNG 20.0 (the alpha composite's copies); L PNG 14.5; P PNG 11.0; 16-bit
# grayscale PNG 14.5. Noise is the worst case for the re-encoded copy. The estimates below
# add ~20% for other machines and versions; tests/test_decode_memory.py re-measures them.
# The (H, W, 3) pixels handed on to the teacher (3 bytes per pixel) outlive the reservation.
_PEAK_BYTES_PER_PIXEL = {"RGBA": 28, "LA": 28, "PA": 28, "P": 28,  # P may carry transparency
                         "I": 40, "F": 40}  # 32-bit modes go through float64
_DEFAULT_PEAK_BYTES_PER_PIXEL = 24


def decode_peak_bytes(image):
    """Estimated peak memory of decoding an opened (header-only) image, in bytes."""
    width, height = image.size
    return width * height * _PEAK_BYTES_PER_PIXEL.get(image.mode, _DEFAULT_PEAK_BYTES_PER_PIXEL)


class DecodeMemory:
    """A process-wide budget of decode memory, shared by the threads decoding in one worker.

    Beam runs a DoFn instance per bundle-processing thread (Dataflow: 12 per SDK process),
    so per-image --max_pixels alone allows a dozen of the largest images at once. A decode
    waits until its estimated peak fits beside the others'; one that could never fit is
    rejected. A Condition rather than a Semaphore: reservations differ in size.
    """

    def __init__(self, limit_bytes):
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self.peak_in_use = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes, what):
        if nbytes > self.limit_bytes:
            raise ImageRejected(f"too_much_memory: decoding {what} needs about {nbytes >> 20} MB > "
                                f"--decode_memory_mb={self.limit_bytes >> 20} (refused before decoding)")
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + nbytes <= self.limit_bytes)
            self.in_use += nbytes
            self.peak_in_use = max(self.peak_in_use, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= nbytes
                self._changed.notify_all()


def shared_memory(shared_handle, decode_memory_mb):
    """The DecodeMemory of this worker process for `decode_memory_mb`, through Beam's Shared
    (`apache_beam.utils.shared.Shared`), which hands every DoFn instance (thread) of one
    process the same object, as RunInference does with its model."""
    limit = decode_memory_mb << 20
    return shared_handle.acquire(lambda: DecodeMemory(limit), tag=f"decode-memory-{limit}")

"""Shared test set-up: quiet TensorFlow; real photos and bad files; a tiny exported teacher; a GCS
emulator on loopback."""

import os
import struct
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

TEACHER_CLASSES = ["cat", "dog", "<script>alert(1)</script>", "ship"]


def real_photos():
    """(name, RGB uint8 array) for photos that ship inside scikit-learn and scikit-image."""
    import skimage.data
    import sklearn.datasets

    samples = sklearn.datasets.load_sample_images()
    photos = [(os.path.splitext(os.path.basename(path))[0], image)
              for path, image in zip(samples.filenames, samples.images)]
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photos.append((name, getattr(skimage.data, name)()))
    return photos


def png_header_claiming(width, height):
    """A valid PNG signature + IHDR for a huge image, with a tiny IDAT: what a decompression
    bomb looks like to a decoder before it allocates the pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def write_photo_folder(folder):
    """Real photos in every supported format and colour mode, plus bad files.

    Returns (good file names, {bad file name: expected reason category}).
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = []

    def save(image, name, **options):
        image.save(folder / name, **options)
        good.append(name)

    for index, (name, pixels) in enumerate(real_photos()):
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((160, 160))
        save(image, f"{name}.jpg", quality=90)
        save(image, f"{name}_upper.JPEG", quality=90)
        save(image.convert("L"), f"{name}_gray.png")
        if index < 3:
            save(image, f"{name}.webp")
            save(image, f"{name}.bmp")
            save(image.convert("P", palette=Image.Palette.ADAPTIVE), f"{name}.gif")
            save(image.convert("CMYK"), f"{name}_cmyk.jpg")
            rgba = image.convert("RGBA")
            rgba.putalpha(128)
            save(rgba, f"{name}_alpha.png")
            sixteen = (np.asarray(image.convert("L"), np.uint16) * 257)
            save(Image.fromarray(sixteen), f"{name}_16bit.png")
    jpeg = (folder / good[0]).read_bytes()
    bad = {
        "empty.jpg": "empty",
        "truncated.jpg": "undecodable",
        "random.png": "undecodable",
        "text_named.jpg": "undecodable",
        "bomb.png": "too_many_pixels",
        "readme.txt": "unsupported_extension",
    }
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    (folder / "random.png").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text_named.jpg").write_text("this is a text file, not a JPEG\n")
    (folder / "bomb.png").write_bytes(png_header_claiming(30000, 30000))
    (folder / "readme.txt").write_text("not an image\n")
    return good, bad


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "unlabeled"
    good, bad = write_photo_folder(folder)
    return folder, good, bad


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A resnet_rs_tiny teacher with 4 classes, exported as the labeling job reads it."""
    import models
    import teacher

    import keras

    path = str(tmp_path_factory.mktemp("teachers") / "tiny")
    keras.utils.set_random_seed(0)  # the same teacher in every session: tests may rely on its margins
    model = models.create("resnet_rs_tiny", num_classes=len(TEACHER_CLASSES))
    # Spread predictions over classes: random logits weights strong enough to matter.
    logits = model.get_layer("logits")
    kernel = np.random.default_rng(3).normal(0, 2.0, logits.kernel.shape).astype(np.float32)
    logits.kernel.assign(kernel)
    teacher.export(model, "resnet_rs_tiny", path, class_names=TEACHER_CLASSES, random_init=True,
                   source="random-init")
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A labeled image folder (3 classes, 4 images each) as the student trainer reads it."""
    from test_student_fixtures import write_image_folder

    return write_image_folder(str(tmp_path_factory.mktemp("data") / "images"), num_classes=3, per_class=4)


@pytest.fixture(scope="module")
def gcs_emulator(request, tmp_path_factory):
    """A GCS emulator holding one bucket, named by the test module's BUCKET (else "test-bucket"),
    with STORAGE_EMULATOR_HOST pointing at it: Beam's gs:// filesystem and google-cloud-storage
    (anonymous credentials there) both honour it, and worker subprocesses inherit it."""
    from benchmarks.gcs_emulator import GcsEmulator

    emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs_emulator")), getattr(request.module, "BUCKET", "test-bucket"))
    patch = pytest.MonkeyPatch()
    patch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    # Beam looks for Google credentials before its first gs:// access and, finding none here,
    # retries with backoff for ~25 s before it connects anonymously; the emulator needs none,
    # so start this process from "looked, found none". (pipeline.storage's client needs no
    # lookup: google-cloud-storage is anonymous under STORAGE_EMULATOR_HOST.)
    from apache_beam.internal.gcp import auth

    patch.setattr(auth._Credentials, "_credentials_init", True)
    patch.setattr(auth._Credentials, "_credentials", None)
    yield emulator
    patch.undo()
    emulator.stop()

"""Builds docs/report.png: a real labeling run and its report, screenshotted in headless Chromium.

  .venv/bin/python docs/report_example.py            # about two minutes on 2 CPU cores

No network and no downloaded weights: a resnet_rs_tiny teacher is trained briefly on crops of
five photos that ship with scikit-image (one class per photo), `pipeline.label` labels fresh
crops of those photos mixed with textures the teacher never saw (they make the low-confidence
tail a real unlabeled set has), and `pipeline.report` adds a holdout of further crops.
"""

import argparse
import os
import pathlib
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
import teacher  # noqa: E402
from models import preprocessing  # noqa: E402
from pipeline import label, report  # noqa: E402

KNOWN = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "camera": "camera"}
UNKNOWN = ("grass", "gravel", "brick", "moon", "hubble_deep_field")
CROP_SIDE = 48


def photo(name):
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def crops(image, count, rng):
    """Random square crops (20-50% of the shorter side), resized to CROP_SIDE, randomly flipped."""
    height, width = image.shape[:2]
    for _ in range(count):
        side = int(rng.uniform(0.2, 0.5) * min(height, width))
        top, left = rng.integers(0, height - side), rng.integers(0, width - side)
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((CROP_SIDE, CROP_SIDE))
        yield np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)


def train_teacher(directory, rng):
    config = models.config("resnet_rs_tiny")
    images, labels = [], []
    for index, source in enumerate(KNOWN.values()):
        for crop in crops(photo(source), 400, rng):
            images.append(crop)
            labels.append(index)
    inputs = preprocessing.eval_transform(np.stack(images), config).numpy()
    model = models.create("resnet_rs_tiny", num_classes=len(KNOWN))
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(inputs, np.array(labels), batch_size=64, epochs=8, shuffle=True, verbose=2)
    teacher.export(model, "resnet_rs_tiny", str(directory), class_names=list(KNOWN), overwrite=True)


def write_images(folder, images, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}-{index:03d}.jpg", quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/report-example")
    parser.add_argument("--screenshot", default=str(pathlib.Path(__file__).with_name("report.png")))
    args = parser.parse_args()
    work, rng = pathlib.Path(args.workdir), np.random.default_rng(0)
    train_teacher(work / "teacher", rng)
    counts = {"astronaut": 90, "cat": 70, "coffee": 45, "rocket": 30, "camera": 60}
    for name, source in KNOWN.items():
        write_images(work / "unlabeled", crops(photo(source), counts[name], rng), name)
        write_images(work / "holdout" / name, crops(photo(source), 40, rng), name)
    for source in UNKNOWN:
        write_images(work / "unlabeled", crops(photo(source), 30, rng), source)
    (work / "unlabeled" / "truncated.jpg").write_bytes((work / "unlabeled" / "cat-000.jpg").read_bytes()[:300])
    (work / "unlabeled" / "notes.jpg").write_text("not an image")
    label.run([f"--teacher={work / 'teacher'}", f"--input={work / 'unlabeled'}/*", f"--output={work / 'labels'}",
               "--min_confidence=0.6", "--per_class=50", "--num_shards=4", "--overwrite", "--runner=DirectRunner"])
    page = work / "report.html"
    report.run([f"--labels={work / 'labels'}", f"--output={page}", f"--holdout={work / 'holdout'}"])
    subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={args.screenshot}", "--window-size=1280,4300", page.as_uri()],
                   check=True, capture_output=True)
    print(f"screenshot -> {args.screenshot}")


if __name__ == "__main__":
    main()

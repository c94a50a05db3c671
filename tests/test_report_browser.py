"""The report of a real labeling run (pipeline.label on generated PNGs), opened in headless Chromium.

Chromium is Debian's `chromium` package, which `make test` installs. Without it the browser
test is skipped, except under CI (the CI variable is set), where it fails instead.
"""

import html
import json
import os
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest
from PIL import Image

import models
import teacher
from pipeline import label
from pipeline.report import cli as report
from pipeline.report.recompute import recompute
from test_report import ALERT_CLASS, QUOTED_URI, SCRIPT_CLASS

CHROMIUM = "/usr/bin/chromium"
CLASS_NAMES = ["cat", SCRIPT_CLASS, ALERT_CLASS, "dog"]
# A file name is a URI in the report; this one tries to close the title attribute it lands in.
QUOTED_NAME = QUOTED_URI.rsplit("/", 1)[1].replace("/", "")


@pytest.fixture(scope="module")
def labeling_run(tmp_path_factory):
    """(OUT_DIR, teacher directory, holdout folder) of a real pipeline.label run."""
    root = tmp_path_factory.mktemp("labeling")
    keras.utils.set_random_seed(0)  # the same teacher, hence the same labels, on every run
    model = models.create("resnet_rs_tiny", num_classes=len(CLASS_NAMES))
    # A freshly initialised classifier gives every image ~1/4 confidence; larger logits spread
    # the confidences so thresholds, caps and duplicates all have work to do.
    logits = model.get_layer("logits")
    logits.kernel.assign(logits.kernel * 400.0)
    teacher.export(model, "resnet_rs_tiny", str(root / "teacher"), class_names=CLASS_NAMES)
    rng = np.random.default_rng(0)
    for name in ("images", "holdout/cat", "holdout/dog"):
        (root / name).mkdir(parents=True)
    for index in range(24):
        pixels = rng.integers(0, 255, size=(36 + index, 48, 3), dtype=np.uint8)
        pixels[..., index % 3] //= 4  # a tint per image, so thumbnails differ at a glance
        Image.fromarray(pixels).save(root / "images" / f"{index:02d}.png")
        Image.fromarray(pixels[::-1]).save(root / "holdout" / ("cat", "dog")[index % 2] / f"{index:02d}.png")
    Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(root / "images" / QUOTED_NAME)
    (root / "images" / "broken.png").write_bytes(b"not a png")
    label.run([f"--teacher={root / 'teacher'}", f"--input={root / 'images'}/*", f"--output={root / 'labels'}",
               "--min_confidence=0.5", "--per_class=8", "--num_shards=2", "--runner=DirectRunner"])
    return root / "labels", str(root / "teacher"), root / "holdout"


def test_report_of_a_real_labeling_run(labeling_run, tmp_path):
    labels, _, _ = labeling_run
    manifest = json.loads((labels / "manifest.json").read_text())
    summary, text = report.build_report(str(labels), output_format="text")
    assert summary["accounting_closes"], summary["warnings"]
    assert summary["counts"] == {name: manifest["counts"][name] for name in summary["counts"]}
    assert summary["counts"]["read"] == 26 and summary["counts"]["rejected"] == 1
    assert len(summary["per_class"]) == len(CLASS_NAMES)
    assert "<- current" in text
    # --recompute on the same records agrees with the job on everything the records can know.
    copy = tmp_path / "copy"
    shutil.copytree(labels, copy)
    (copy / "stats.json").unlink()
    recomputed = recompute(str(copy), ["--runner=DirectRunner"])
    job = json.loads((labels / "stats.json").read_text())
    for ours, theirs in zip(recomputed["per_class"], job["per_class"]):
        assert (ours["name"], ours["kept"], ours["duplicates"], ours["written"]) == \
            (theirs["name"], theirs["kept"], theirs["duplicates"], theirs["written"])
    assert recomputed["rejected_by_reason"] == job["rejected_by_reason"]


def chromium(*arguments):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; under CI the browser test must run (make test installs it).")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, or run make test as root).")
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             *arguments], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_in_headless_chromium(labeling_run, tmp_path):
    labels, teacher_directory, holdout = labeling_run
    page = tmp_path / "report.html"
    report.build_report(str(labels), str(page), holdout=str(holdout), teacher_path=teacher_directory)
    screenshot = tmp_path / "report.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1280,2400", page.as_uri())
    with Image.open(screenshot) as image:
        assert image.size == (1280, 2400)
        # A page that failed to render is one flat colour; a report has text, bars and thumbnails.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 200
    dom = chromium("--dump-dom", "--virtual-time-budget=2000", page.as_uri())
    # The sorter ran (scripts do run, the CSP admits it) ...
    assert re.search(r'<html[^>]*data-sorter="ready"', dom)
    # ... and nothing from the data did: the payloads would have renamed the page or marked <body>.
    assert "<title>Label confidence report</title>" in dom and "INJECTED</title>" not in dom
    assert not re.search(r"<body[^>]*data-injected", dom)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "&lt;script&gt;document.title=" in dom
    # Plots: two histograms, sweep, reliability diagram, accuracy sweep, class chart. Tables:
    # accounting, rejections, teacher, threshold sweep, holdout sweep, classes.
    assert len(re.findall(r"<svg[^>]*class=\"chart\"", dom)) == 6
    assert dom.count("<rect") == page.read_text().count("<rect") > 0  # every bar reached the DOM
    class_table = re.search(r'<table class="sortable" id="classes">.*?</table>', dom, re.S).group(0)
    assert class_table.count("<tr>") == 1 + len(CLASS_NAMES)
    assert "Holdout calibration" in dom and "Threshold sweep" in dom and dom.count("<table") == 6
    assert re.search(r'<img src="data:image/jpeg;base64,', dom)
    # The sorter sorts: report.html#sort=COLUMN[-descending] opens the class table sorted.
    assert class_rows(page, "kept-descending", 4) == sorted(class_rows(page, "kept", 4), reverse=True)
    assert class_rows(page, "name", 1) == sorted(CLASS_NAMES)


def class_rows(page, sort, column):
    """One column (0 class, 1 name, 4 kept) of the class table as Chromium shows it for #sort=`sort`."""
    dom = chromium("--dump-dom", "--virtual-time-budget=2000", f"{page.as_uri()}#sort={sort}")
    table = re.search(r'<table class="sortable" id="classes">.*?</table>', dom, re.S).group(0)
    assert re.search(rf'data-key="{sort.split("-")[0]}" aria-sort="(a|de)scending"', table)
    rows = [re.findall(r'data-value="([^"]*)"', row) for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    values = [html.unescape(cells[column]) for cells in rows]
    return [float(value) for value in values] if column != 1 else values

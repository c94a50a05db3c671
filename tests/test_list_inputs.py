"""List-file inputs whose lines and globs reach one file more than once: every path reached is
one unit of work, every further reach one `duplicate_uri` rejection, so the accounting closes.

Before, a list was deduplicated line by line before its globs were expanded: a literal line
plus a glob matching it made two units of one path (stage 1 crashed on the shard holding
both), and two overlapping globs labeled one image twice (stage 2's selection raised).
"""

import itertools
import os

import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline import label, sources
from test_label import _read_run

NAMES = ("a.png", "b.png", "c.png", "d.png")
DUPLICATE = "duplicate_uri: named more than once by the list (by its lines and its globs' matches); read once"
NOT_FOUND = "not_found: the glob matches no file"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """A folder of four small PNGs (different pixels, so content dedup would not merge them)."""
    folder = tmp_path_factory.mktemp("listed") / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(folder / name)
    return folder


def _run_list(tiny_teacher, folder, lines, output):
    listing = output.parent / f"{output.name}.txt"
    listing.write_text("".join(f"{line}\n" for line in lines))
    # --min_confidence=0: every labeled image passes the threshold, so a twice-labeled one reaches
    # selection; --per_class=0: each is written once (no class cap or balance copies to count).
    label.run([f"--teacher={tiny_teacher}", f"--input={listing}", f"--output={output}", "--num_shards=2",
               "--max_batch_size=8", "--allow_random_teacher", "--min_confidence=0", "--per_class=0"])
    return _read_run(output)


def _assert_accounted(run, labeled, rejected):
    """`labeled`: the paths written, each once; `rejected`: the expected (uri, reason) lines."""
    manifest, written, lines = run
    counts = manifest["counts"]
    assert counts["read"] == len(labeled) + len(rejected), counts
    assert counts["labeled"] == len(labeled) and counts["rejected"] == len(rejected), counts
    assert counts["read"] == counts["rejected"] + counts["labeled"]
    assert counts["written"] == counts["kept"] == len(labeled), counts
    assert sorted(r["image/source_uri"] for r in written) == sorted(labeled)
    assert sorted((r["uri"], r["reason"]) for r in lines) == sorted(rejected)
    assert all(r["stage"] == "read" for r in lines)
    by_reason = {}
    for _, reason in rejected:
        by_reason[reason.split(":")[0]] = by_reason.get(reason.split(":")[0], 0) + 1
    assert manifest["rejected_by_reason"] == by_reason


def test_a_literal_line_and_a_glob_matching_it_label_the_file_once(pngs, tiny_teacher, tmp_path):
    run = _run_list(tiny_teacher, pngs, [pngs / "a.png", pngs / "*.png"], tmp_path / "out")
    _assert_accounted(run, [str(pngs / name) for name in NAMES], [(str(pngs / "a.png"), DUPLICATE)])


def test_two_overlapping_globs_label_each_file_once(pngs, tiny_teacher, tmp_path):
    run = _run_list(tiny_teacher, pngs, [pngs / "[abc].png", pngs / "[bcd].png"], tmp_path / "out")
    _assert_accounted(run, [str(pngs / name) for name in NAMES],
                      [(str(pngs / "b.png"), DUPLICATE), (str(pngs / "c.png"), DUPLICATE)])


def test_a_glob_matching_nothing_is_one_rejection_naming_the_pattern(pngs, tiny_teacher, tmp_path):
    missing = str(pngs / "missing-*.png")
    run = _run_list(tiny_teacher, pngs, [pngs / "a.png", missing, missing], tmp_path / "out")
    # The same pattern twice is reached twice: its not_found once, then a duplicate.
    _assert_accounted(run, [str(pngs / "a.png")], [(missing, NOT_FOUND), (missing, DUPLICATE)])


def test_a_line_listed_twice_is_read_once(pngs, tiny_teacher, tmp_path):
    run = _run_list(tiny_teacher, pngs, [pngs / "a.png", pngs / "b.png", pngs / "a.png"], tmp_path / "out")
    _assert_accounted(run, [str(pngs / "a.png"), str(pngs / "b.png")], [(str(pngs / "a.png"), DUPLICATE)])


def test_listed_units_on_a_test_pipeline(pngs, tmp_path):
    """Literal, glob and a dangling symlink reached by both: one unit per path, sizes from the match."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in NAMES[:2]:
        (folder / name).write_bytes((pngs / name).read_bytes())
    os.symlink(folder / "gone.png", folder / "dangling.png")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{folder}/a.png\n{folder}/*.png\n{folder}/dangling.png\n# a comment\n\n{folder}/a.png\n")
    source = sources.input_source(str(listing), "auto", None, None, 1, sources.DEFAULT_MAX_BYTES)
    size = {name: (folder / name).stat().st_size for name in NAMES[:2]}
    dangling = f"{folder}/dangling.png"
    unlistable = ("rejected", dangling, f"unreadable: a dangling symlink (its target "
                                        f"{str(folder / 'gone.png')!r} does not exist)")
    reaches = [("file", f"{folder}/a.png", None), ("file", f"{folder}/a.png", size["a.png"]),
               ("file", f"{folder}/b.png", size["b.png"]), unlistable, ("file", dangling, None),
               ("file", f"{folder}/a.png", None)]
    with test_pipeline.TestPipeline() as pipeline:
        units = pipeline | sources.ListUnits(source)
        assert_that(units, equal_to(reaches))  # one per path a line reaches, merged in the bucket:
    assert sorted(sources.one_unit_per_path(reaches)) == sorted([
        ("file", f"{folder}/a.png", size["a.png"]), ("file", f"{folder}/b.png", size["b.png"]), unlistable,
        ("rejected", f"{folder}/a.png", DUPLICATE), ("rejected", f"{folder}/a.png", DUPLICATE),
        ("rejected", dangling, DUPLICATE)])


def test_the_unit_of_a_path_does_not_depend_on_the_order_of_its_reaches():
    reaches = [("file", "p", None), ("file", "p", 12), ("file", "p", 10), ("rejected", "p", "unreadable: x")]
    outputs = {tuple(sources.one_unit_per_path(order)) for order in itertools.permutations(reaches)}
    assert outputs == {(("file", "p", 12),) + (("rejected", "p", DUPLICATE),) * 3}
    assert list(sources.one_unit_per_path([("rejected", "p", "unreadable: x"), ("file", "p", None)])) == [
        ("rejected", "p", "unreadable: x"), ("rejected", "p", DUPLICATE)]
    assert list(sources.one_unit_per_path([("file", "p", None), ("file", "q", None)])) == [
        ("file", "p", None), ("file", "q", None)]

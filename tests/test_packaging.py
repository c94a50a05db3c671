"""setup.py builds the sdist Dataflow workers install with --setup_file."""

import pathlib
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sdist_builds_and_holds_the_four_packages(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (sdist,) = tmp_path.glob("resnet[-_]rs[-_]selftrain-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for package in ("models", "teacher", "pipeline", "student"):
        assert f"{package}/__init__.py" in names
    assert "models/resnet_rs.py" in names and "setup.py" in names
    assert not any(name.startswith("tests/") for name in names)

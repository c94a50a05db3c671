"""`make demo` keeps working: the demo module runs end to end on a small model."""

import subprocess
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_on_the_tiny_model():
    result = subprocess.run([sys.executable, "-m", "demo", "--model=resnet_rs_tiny", "--seconds=0.2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters" in result.stdout and "GFLOPs" in result.stdout
    assert "chelsea" in result.stdout and "images/s" in result.stdout

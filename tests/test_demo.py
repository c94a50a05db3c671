"""`make demo` keeps working: the whole loop (teacher, label, report, student) on real digits,
with every step run through its real entry point; a few steps only, so no accuracy claim."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_self_training_loop(tmp_path):
    result = subprocess.run([sys.executable, "-m", "demo", f"--workdir={tmp_path / 'demo'}", "--rounds=1",
                             "--teacher_steps=8", "--student_steps=8", "--min_confidence=0",
                             "--no-require_improvement"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout
    for step in ("python -m student.train", "python -m pipeline.label", "python -m pipeline.report"):
        assert step in output
    assert "teacher (labeled only)" in output and "student 1" in output and "correct of" in output
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "student1" / "teacher" / "teacher.json").exists()

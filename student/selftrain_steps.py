"""student.selftrain's steps: what each round runs, when a step counts as finished, how a step
process is run and logged, and the summary of a finished loop."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from typing import Callable

from student.selftrain_flags import StepError, UsageError, flag_name

RESULTS_FILE = "eval_results.json"  # student.train writes it last, after teacher/
TEACHER_FILE = "teacher.json"
MANIFEST_FILE = "manifest.json"  # pipeline.label commits it last
CONTROL_DIR = "control"
ERROR_LINES = 40
# The settings each kind of step reads (a changed one is refused once such a step started).
TRAIN_USES = ("labeled", "eval", "train_flags")
USES = {"teacher": ("model", "teacher", "teacher_train_flags") + TRAIN_USES,
        "label": ("unlabeled", "label_flags", "teacher"),
        "report": ("holdout", "report_flags"),
        "student": ("model", "student_model", "student_train_flags") + TRAIN_USES}
USES["control"] = USES["student"]


@dataclasses.dataclass
class Step:
    name: str  # also its log file's name: teacher, round1-label, round1-report, round1-student, ...
    title: str
    module: str
    flags: list
    outputs: list  # the first path any run of the step creates comes first
    done: Callable  # () -> a few words of evidence that the step finished, or None
    uses: tuple
    on_success: Callable = None  # (stdout) -> None, before the step is checked for completeness
    # Reads no earlier step's output (the control): never stale, and may run after later steps.
    independent: bool = False

    def finished(self):
        return self.done()

    def started(self):
        return any(os.path.exists(path) for path in self.outputs)


def _exists(*paths):
    return all(os.path.exists(path) for path in paths)


def _training_done(model_dir):
    def done():
        if _exists(os.path.join(model_dir, RESULTS_FILE), os.path.join(model_dir, "teacher", TEACHER_FILE)):
            return f"{os.path.join(model_dir, RESULTS_FILE)} and teacher/ exist"
        return None
    return done


def resolve_teacher(path):
    """--teacher (a teacher directory or a training run's model_dir) -> (teacher dir, run dir or None)."""
    if "://" in path:
        return path, None  # pipeline.label reads and checks it; nothing here reads remote files
    if os.path.exists(os.path.join(path, TEACHER_FILE)):
        parent = os.path.dirname(path.rstrip("/"))
        return path, parent if os.path.exists(os.path.join(parent, RESULTS_FILE)) else None
    if os.path.exists(os.path.join(path, "teacher", TEACHER_FILE)):
        return os.path.join(path, "teacher"), path
    raise UsageError(f"--teacher={path}: neither {path}/{TEACHER_FILE} nor {path}/teacher/{TEACHER_FILE} exists; "
                         "pass a teacher directory (python -m teacher.export) or a student.train --model_dir.")


def _runtime_flags(settings):
    # Before the user's own step flags, so a --notf_logs among them still wins for that step.
    return ["--tf_logs"] if settings.tf_logs else []


def _train_flags(settings, model, model_dir, role_flags, pseudo=None):
    flags = [f"--model={model}", f"--labeled={settings.labeled}"]
    flags += [f"--eval={settings.eval}"] if settings.eval else []
    flags += [f"--model_dir={model_dir}", *_runtime_flags(settings), *settings.train_flags, *role_flags]
    return flags + ([f"--pseudo={pseudo}"] if pseudo else [])


def plan(settings):
    """The loop's steps in order, for settings.rounds rounds (paths from settings.workdir)."""
    s, workdir, steps = settings, settings.workdir, []
    if s.teacher:
        teacher_dir, _ = resolve_teacher(s.teacher)
    else:
        run_dir = os.path.join(workdir, "teacher")
        teacher_dir = os.path.join(run_dir, "teacher")
        steps.append(Step("teacher", "round 0: train the teacher on --labeled only (student.train without --pseudo)",
                          "student.train", _train_flags(s, s.model, run_dir, s.teacher_train_flags), [run_dir],
                          _training_done(run_dir), USES["teacher"]))
    if s.control:
        control_dir = os.path.join(workdir, CONTROL_DIR)
        steps.append(Step("control", "round 0: train the control (the students' model, schedule and noise on "
                          "--labeled only)", "student.train",
                          _train_flags(s, s.student_model or s.model, control_dir,
                                       _supervised(s.student_train_flags)),
                          [control_dir], _training_done(control_dir), USES["control"], independent=True))
    for index in range(1, s.rounds + 1):
        round_dir = os.path.join(workdir, f"round{index}")
        labels = os.path.join(round_dir, "labels")
        manifest = os.path.join(labels, MANIFEST_FILE)
        steps.append(Step(
            f"round{index}-label", f"round {index}: label --unlabeled with {teacher_dir}", "pipeline.label",
            [f"--teacher={teacher_dir}", f"--input={s.unlabeled}", f"--output={labels}", *_runtime_flags(s),
             *s.label_flags,
             # The loop relabels only an unfinished step's output: replacing it is the point.
             "--overwrite"],
            [labels], lambda manifest=manifest: f"{manifest} committed" if os.path.exists(manifest) else None,
            USES["label"]))
        html, text = os.path.join(round_dir, "report.html"), os.path.join(round_dir, "report.txt")
        steps.append(Step(
            f"round{index}-report", f"round {index}: confidence report of the labels", "pipeline.report",
            [f"--labels={labels}", f"--output={html}"] + ([f"--holdout={s.holdout}"] if s.holdout else [])
            + ["--format=text", *_runtime_flags(s), *s.report_flags],
            [html, text], lambda html=html, text=text: "report.html and report.txt exist" if _exists(html, text)
            else None, USES["report"],
            # report.txt is written only after the report exited 0, so the pair marks a whole report.
            on_success=lambda stdout, text=text: _write_text(text, stdout)))
        student_dir = os.path.join(round_dir, "student")
        steps.append(Step(
            f"round{index}-student", f"round {index}: train student {index} on labeled + pseudo-labeled batches",
            "student.train", _train_flags(s, s.student_model or s.model, student_dir, s.student_train_flags,
                                          pseudo=os.path.join(labels, "train-*.tfrecord")),
            [student_dir], _training_done(student_dir), USES["student"]))
        teacher_dir = os.path.join(student_dir, "teacher")
    return steps


def _supervised(role_flags):
    """The students' flags without those that only apply with --pseudo (student.train refuses
    them without it): the control trains as the students do, on the labeled data alone."""
    from student.config import PSEUDO_ONLY

    return tuple(flag for flag in role_flags
                 if flag_name(flag) not in PSEUDO_ONLY and flag_name(flag)[2:] not in PSEUDO_ONLY)


def _write_text(path, text):
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(f"{path}.tmp", path)


def _stop(process):
    """Ends a step process the loop no longer waits for (the loop was killed or interrupted)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def execute(step, log_path):
    """Runs `python -m step.module step.flags`: stdout shown live and logged, stderr logged.

    Raises StepError naming the step, its exit status, its last lines and the log.
    """
    shown = shlex.join(["python", "-m", step.module, *step.flags])
    print(f"$ {shown}", flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    lines = []
    # Unbuffered: a step's progress lines show up as they are printed, not when it exits.
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shown}\n")
        log.flush()
        offset = log.tell()
        # The child appends its stderr to the same file (O_APPEND), interleaved with stdout by line.
        process = subprocess.Popen([sys.executable, "-m", step.module, *step.flags], stdout=subprocess.PIPE,
                                   stderr=log, text=True, errors="replace", env=environment)
        try:
            for line in process.stdout:
                print(f"   {line.rstrip()}" if line.strip() else "", flush=True)
                log.write(line)
                log.flush()
                lines.append(line)
            code = process.wait()
        except BaseException:  # KeyboardInterrupt, or SystemExit from the loop's SIGTERM handler
            print(f"student.selftrain: interrupted during step {step.name}; stopping {step.module}. Rerun the "
                  "same command to continue where it stopped.", file=sys.stderr, flush=True)
            raise
        finally:
            _stop(process)
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            tail = log.readlines()[-ERROR_LINES:]
        # The step's stderr went only to its log: its last lines go to stderr here, so that the
        # error itself can stay one line (models/cli.py), as every entry point's does.
        sys.stderr.write("".join(f"   {line.rstrip()}\n" for line in tail))
        sys.stderr.flush()
        raise StepError(f"step {step.name} failed: {step.module} exited with status {code}. Its last lines are "
                        f"above; all of them are in {log_path}. Fix the cause and rerun the same command: "
                        "finished steps are skipped.")
    if step.on_success:
        step.on_success("".join(lines))
    if not step.finished():
        raise StepError(f"step {step.name}: {step.module} exited 0 but left no complete output in "
                             f"{step.outputs[0]} (a --dry_run, or a runner that does not wait for its job?).")


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def summarize(settings):
    """{workdir, rounds, rows}: one row per model, with its eval and the labels it trained on."""
    def row(name, model, run_dir, teacher_dir, labels=None):
        results = _read_json(os.path.join(run_dir, RESULTS_FILE)) if run_dir else None
        evaluation = (results or {}).get("eval")
        manifest = _read_json(os.path.join(labels, MANIFEST_FILE)) if labels else None
        return {"name": name, "model": model, "model_dir": run_dir, "teacher_dir": teacher_dir,
                "eval": evaluation, "top_1": evaluation["top_1"] if evaluation else None,
                "error": 1 - evaluation["top_1"] if evaluation else None, "labels": labels,
                "report": os.path.join(os.path.dirname(labels), "report.html") if labels else None,
                "counts": manifest["counts"] if manifest else None}

    workdir = settings.workdir
    if settings.teacher:
        teacher_dir, run_dir = resolve_teacher(settings.teacher)
        meta = None if "://" in teacher_dir else _read_json(os.path.join(teacher_dir, TEACHER_FILE))
        rows = [row("teacher (--teacher)", (meta or {}).get("model_name", "?"), run_dir, teacher_dir)]
    else:
        run_dir = os.path.join(workdir, "teacher")
        rows = [row("teacher", settings.model, run_dir, os.path.join(run_dir, "teacher"))]
    if settings.control:
        control_dir = os.path.join(workdir, CONTROL_DIR)
        rows.append(row("control", settings.student_model or settings.model, control_dir,
                        os.path.join(control_dir, "teacher")))
    for index in range(1, settings.rounds + 1):
        round_dir = os.path.join(workdir, f"round{index}")
        rows.append(row(f"student {index}", settings.student_model or settings.model,
                        os.path.join(round_dir, "student"), os.path.join(round_dir, "student", "teacher"),
                        os.path.join(round_dir, "labels")))
    return {"workdir": workdir, "rounds": settings.rounds, "rows": rows}


def format_table(summary):
    """The summary as a terminal table (eval columns show '-' for runs without --eval)."""
    header = (f"{'model':<22}{'architecture':<18}{'eval top-1':>11}{'error':>8}{'kept':>9}"
              f"{'below threshold':>17}{'duplicates':>12}")
    lines = [header]
    for row in summary["rows"]:
        counts = row["counts"] or {}

        def number(value, width, spec):
            return f"{'-' if value is None else format(value, spec):>{width}}"

        lines.append(f"{row['name']:<22}{row['model']:<18}{number(row['top_1'], 11, '.4f')}"
                     f"{number(row['error'], 8, '.4f')}{number(counts.get('kept'), 9, 'd')}"
                     f"{number(counts.get('below_threshold'), 17, 'd')}{number(counts.get('duplicates'), 12, 'd')}")
    return "\n".join(lines)

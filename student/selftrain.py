r"""The whole self-training loop in one command: teacher -> label -> report -> student, N rounds.

  python -m student.selftrain --labeled=DIR|tfds:NAME --unlabeled=GLOB|LIST_FILE --rounds=3 \
      --workdir=DIR [--model=resnet_rs_50] [--student_model=resnet_rs_101] [--teacher=DIR] [--control] \
      [--eval=SOURCE] [--holdout=SOURCE] [--train_flags='--batch_size=4096 --strategy=tpu ...'] \
      [--teacher_train_flags='...'] [--student_train_flags='...'] [--label_flags='--per_class=130000 ...'] \
      [--report_flags='...'] [--overwrite] [--tf_logs]

Round 0 trains the teacher on --labeled (student.train without --pseudo) unless --teacher
names one (a teacher directory, or a student.train --model_dir). Round r then runs
  pipeline.label   the current teacher labels --unlabeled            -> WORKDIR/roundR/labels
  pipeline.report  their confidence report (text, and HTML; --holdout) -> WORKDIR/roundR/report.html
  student.train    student R on labeled + pseudo-labeled batches       -> WORKDIR/roundR/student
and student R is round R+1's teacher. With --control, round 0 also trains the control: the
students' model with the students' flags (schedule, noise) on --labeled alone, in
WORKDIR/control; the students' gain is their error against its error. It reads no other
step's output, so --control added to a finished loop trains the control alone.

Every step is its product's own entry point, run as a separate process and printed first, so
each can be rerun by hand; its output (and stderr) also goes to WORKDIR/logs/STEP.log. At the
end a table (eval top-1 and error of every model, and the pseudo-labels each student trained
on) is printed and written to WORKDIR/summary.json.

Flags for the steps: --train_flags go to every student.train run, then --teacher_train_flags
to the teacher's or --student_train_flags to the students' (a flag in both: the later wins);
--label_flags to pipeline.label, --report_flags to pipeline.report. The loop sets the flags
that tie the steps together (--model_dir, --pseudo, --teacher, --input, --output, ...), and
checks every step's flags before the first step starts.

Resuming: rerunning the same command skips every finished step (training: eval_results.json
and teacher/ in its model_dir; labeling: a committed manifest.json; report: report.html and
report.txt) and continues at the first unfinished one; student.train itself resumes from its
last checkpoint. A larger --rounds continues a finished loop. WORKDIR/selftrain.json records
the settings: a rerun that changes one a started step used is refused (--overwrite discards
the loop's runs in WORKDIR and starts over).

Exit status: 0 when every step finished, 2 for a usage error (a bad flag of the loop or of a
step, or a workdir it cannot resume), 1 when a step fails (its last lines are printed first);
either error is one line `student.selftrain: error: MESSAGE` on stderr (models/cli.py).
"""

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time

from absl import flags

from models import cli
from student import selftrain_flags as checks
from student import selftrain_steps as steps_lib
from student.selftrain_flags import SelfTrainError, UsageError

PROG = "student.selftrain"
SETTINGS_FILE = "selftrain.json"
SUMMARY_FILE = "summary.json"
SCHEMA_VERSION = 1
PASS_THROUGH = ("train_flags", "teacher_train_flags", "student_train_flags", "label_flags", "report_flags")
# May differ between runs of one workdir: more rounds continue the loop, fewer only summarise;
# --tf_logs changes only what the steps print.
FREE_TO_CHANGE = ("rounds", "overwrite", "tf_logs")


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    labeled: str
    unlabeled: str
    workdir: str
    rounds: int = 1
    model: str = "resnet_rs_50"
    student_model: str = None  # None: --model
    teacher: str = None  # None: round 0 trains one
    control: bool = False  # also train the students' model, schedule and noise on --labeled alone
    eval: str = None
    holdout: str = None
    train_flags: tuple = ()
    teacher_train_flags: tuple = ()
    student_train_flags: tuple = ()
    label_flags: tuple = ()
    report_flags: tuple = ()
    overwrite: bool = False
    tf_logs: bool = False  # passed on to every step as --tf_logs

    def normalized(self):
        """Local paths made absolute (the record must mean the same from any directory)."""
        paths = {name: checks.absolute(getattr(self, name))
                 for name in ("labeled", "unlabeled", "workdir", "teacher", "eval", "holdout")}
        return dataclasses.replace(self, **paths, **{name: tuple(getattr(self, name)) for name in PASS_THROUGH})

    def recorded(self):
        record = dataclasses.asdict(self)
        for name in FREE_TO_CHANGE:
            record.pop(name)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in record.items()}


def define_flags():
    """The loop's flags, on a private FlagValues: importing the module defines no global flags
    (student.train's would clash in one process), and tests can parse many times."""
    values = flags.FlagValues()
    f = dict(flag_values=values)
    flags.DEFINE_string("labeled", None, "Labeled images: tfds:NAME, a TFRecord glob or an image folder with one "
                        "subfolder per class (student.train --labeled).", **f)
    flags.DEFINE_string("unlabeled", None, "Unlabeled images: a glob, a list file, a TFRecord glob or "
                        "tfds:NAME/SPLIT (pipeline.label --input).", **f)
    flags.DEFINE_string("eval", None, "Eval source of every training run (student.train --eval).", **f)
    flags.DEFINE_string("holdout", None, "Labeled images no model trained on, for the report's accuracy and "
                        "calibration (pipeline.report --holdout).", **f)
    flags.DEFINE_integer("rounds", LoopSettings.rounds, "Students trained in turn, each the next teacher.", **f)
    flags.DEFINE_string("model", LoopSettings.model, "The teacher's model (round 0).", **f)
    flags.DEFINE_string("student_model", None, "The students' model (default: --model).", **f)
    flags.DEFINE_string("teacher", None, "An existing teacher (teacher directory or student.train --model_dir): "
                        "skips round 0.", **f)
    flags.DEFINE_bool("control", False, "Also train the control: the students' model with their flags "
                      "(schedule, noise) on --labeled alone, in WORKDIR/control. The gain of self-training is "
                      "the students' error against the control's, not against a teacher trained differently.", **f)
    for name, where in (("train_flags", "every student.train run"), ("teacher_train_flags", "the teacher's run"),
                        ("student_train_flags", "the students' runs"), ("label_flags", "pipeline.label"),
                        ("report_flags", "pipeline.report")):
        flags.DEFINE_string(name, None, f"Extra flags for {where}: '--FLAG=VALUE ...'.", **f)
    flags.DEFINE_string("workdir", None, "Local directory for every round's runs, labels, reports, logs, "
                        "selftrain.json and summary.json.", **f)
    flags.DEFINE_bool("overwrite", False, "Discard the loop's runs in --workdir (teacher/, control/, round*/, logs/, "
                      "selftrain.json, summary.json) and start over.", **f)
    flags.DEFINE_bool(cli.TF_LOGS, False, cli.TF_LOGS_HELP + " Passed on to every step.", **f)
    return values


# --help's sections; a flag missing here is listed under "Other flags" (models/cli.py).
GROUPS = (
    ("Data", ["labeled", "unlabeled", "eval", "holdout"]),
    ("Models", ["rounds", "model", "student_model", "teacher", "control"]),
    ("Steps' flags (each one quoted string, checked before the first step runs)", list(PASS_THROUGH)),
    ("Work directory", ["workdir", "overwrite"]),
    ("Runtime", [cli.TF_LOGS]),
)
REQUIRED = ("labeled", "unlabeled", "workdir")


def help_text():
    return cli.help_text(__doc__, define_flags(), GROUPS, REQUIRED)


def parse_args(argv):
    """`argv` (without the program name) -> LoopSettings; raises UsageError for a malformed command."""
    values = define_flags()
    cli.parse_own_flags(values, PROG, argv, UsageError)
    missing = [f"--{name}" for name in REQUIRED if not values[name].value]
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise UsageError(f"{names} {'are' if len(missing) > 1 else 'is'} required.")
    settings = {field.name: values[field.name].value for field in dataclasses.fields(LoopSettings)}
    for name in PASS_THROUGH:
        settings[name] = checks.split(name, settings[name])
    return LoopSettings(**settings)


def to_argv(settings):
    """The command-line flags that parse_args turns back into `settings` (to show a user the command)."""
    argv = []
    for field in dataclasses.fields(LoopSettings):
        value = getattr(settings, field.name)
        if field.name in PASS_THROUGH:
            argv += [f"--{field.name}={shlex.join(value)}"] if value else []
        elif isinstance(value, bool):
            argv += [f"--{field.name}"] if value else []
        elif value is not None and (value != field.default or field.name == "rounds"):
            argv.append(f"--{field.name}={value}")
    return argv


def check(settings):
    """The checks that read no data and import no framework; raises UsageError."""
    s = settings
    if s.rounds < 1:
        raise UsageError(f"--rounds={s.rounds}: must be at least 1.")
    if checks.is_remote(s.workdir):
        raise UsageError(f"--workdir={s.workdir}: must be a local directory (it holds the loop's state and "
                             "logs); the steps' inputs may be remote.")
    if s.teacher and s.teacher_train_flags:
        raise UsageError("--teacher_train_flags: no teacher is trained when --teacher is given.")
    for name, what in (("labeled", "file or folder"), ("unlabeled", "file or glob match"), ("eval", "file or folder"),
                       ("holdout", "file or folder")):
        checks.check_exists(name, getattr(s, name), what)
    for name, module in (("train_flags", "student.train"), ("teacher_train_flags", "student.train"),
                         ("student_train_flags", "student.train"), ("label_flags", "pipeline.label"),
                         ("report_flags", "pipeline.report")):
        checks.check_not_owned(name, getattr(s, name), module)


def preflight(settings, plan):
    """Every step's flags through its own parser and checks, before the first step runs."""
    s = settings
    train = [("train_flags", s.train_flags)]
    for step in plan:
        if step.module == "student.train":
            role = "teacher_train_flags" if step.name == "teacher" else "student_train_flags"
            fallback = {"model": "--student_model" if role == "student_train_flags" and s.student_model else "--model",
                        "labeled": "--labeled", "eval": "--eval"}
            checks.check_train_flags(step.flags, train + [(role, getattr(s, role))], fallback)
        elif step.module == "pipeline.label":
            checks.check_label_flags(step.flags, "label_flags")
        else:
            checks.check_report_flags(step.flags, "report_flags")
        if step.name.startswith("round1-student"):
            break  # later rounds repeat round 1's flags with other paths


def discard(workdir):
    """--overwrite: removes only what the loop itself writes (a demo keeps its data beside it)."""
    if not os.path.isdir(workdir):
        return
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if name in ("teacher", steps_lib.CONTROL_DIR, "logs") or re.fullmatch(r"round\d+", name):
            print(f"--overwrite: removing {path}", flush=True)
            shutil.rmtree(path)
        elif name in (SETTINGS_FILE, SUMMARY_FILE):
            os.remove(path)


def resume_check(settings, plan):
    """Refuses a rerun whose changed setting a started step already used."""
    path = os.path.join(settings.workdir, SETTINGS_FILE)
    started = [step for step in plan if step.started()]
    if not os.path.exists(path):
        if started:
            raise UsageError(f"--workdir={settings.workdir} holds {started[0].outputs[0]} but no {SETTINGS_FILE}: "
                                 "it was not made by student.selftrain. Pick another --workdir, or pass --overwrite "
                                 "to discard its runs.")
        return
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)["settings"]
    for name, value in settings.recorded().items():
        old = previous.get(name)
        if old == value:
            continue
        users = [step.name for step in started if name in step.uses]
        shown = {"old": old, "new": value}
        for key, item in shown.items():
            shown[key] = repr(" ".join(item)) if isinstance(item, list) else repr(item)
        if users:
            raise UsageError(f"--{name} changed since {settings.workdir} was started ({shown['old']} -> "
                                 f"{shown['new']}), and step {users[0]} already started with the old value. Rerun with "
                                 "the old value, pick another --workdir, or pass --overwrite to discard the loop's "
                                 "runs there and start over.")
        print(f"note: --{name} changed ({shown['old']} -> {shown['new']}); no step that uses it has started, "
              "so the new value applies.", flush=True)


def write_json(path, document):
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)  # a kill mid-write leaves the old file, never half of one


def run(settings):
    """Runs (or resumes) the loop per `settings` (LoopSettings); returns the summary dict.

    Raises UsageError for a bad flag or a workdir that cannot be resumed (before any step runs),
    StepError for a failed step (both are SelfTrainErrors).
    """
    settings = settings.normalized()
    check(settings)
    plan = steps_lib.plan(settings)
    if not settings.overwrite:
        resume_check(settings, plan)
    preflight(settings, plan)
    if settings.overwrite:
        discard(settings.workdir)
    finished = [step.finished() for step in plan]
    # An independent step (the control) neither goes stale nor makes later steps stale: one
    # added to a finished loop runs alone.
    first = next((index for index, (step, evidence) in enumerate(zip(plan, finished))
                  if not evidence and not step.independent), len(plan))
    for step in plan[first + 1:]:
        if step.started() and not step.independent:
            raise UsageError(f"{step.outputs[0]} exists, but an earlier step ({plan[first].name}) is unfinished "
                                 f"and will run again, so {step.name} would be stale. Delete it (and every later "
                                 "round), or pass --overwrite to start over.")
    os.makedirs(settings.workdir, exist_ok=True)
    write_json(os.path.join(settings.workdir, SETTINGS_FILE),
               {"schema_version": SCHEMA_VERSION, "settings": settings.recorded(), "rounds": settings.rounds})
    skipped = [bool(evidence) and (index < first or step.independent)
               for index, (step, evidence) in enumerate(zip(plan, finished))]
    print(f"student.selftrain: {len(plan)} steps in {settings.workdir} ({sum(skipped)} finished earlier); step logs in "
          f"{os.path.join(settings.workdir, 'logs')}", flush=True)
    start, step_seconds = time.perf_counter(), {}
    for index, step in enumerate(plan):
        print(f"\n== {step.title}", flush=True)
        if skipped[index]:
            print(f"   skip: finished earlier ({finished[index]})", flush=True)
            continue
        step_start = time.perf_counter()
        steps_lib.execute(step, os.path.join(settings.workdir, "logs", f"{step.name}.log"))
        step_seconds[step.name] = round(time.perf_counter() - step_start, 1)
    summary = steps_lib.summarize(settings)
    # Wall seconds of this run and of each step it ran (process start-up included; a skipped
    # step has none).
    summary["seconds"], summary["step_seconds"] = round(time.perf_counter() - start, 1), step_seconds
    write_json(os.path.join(settings.workdir, SUMMARY_FILE), summary)
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # --helpfull too: the private FlagValues holds no absl flags for it to add.
    if cli.wants_help(argv) or "--helpfull" in argv:
        sys.stdout.write(help_text())
        return
    # A plain `kill` of the loop must also stop the step it is running (see steps_lib.execute).
    previous = signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        # As every entry point: `PROG: error: ...`, status 2 for a usage error, 1 for a failure.
        summary = cli.run_main(PROG, lambda: run(parse_args(argv)), usage_errors=(UsageError,),
                               failures=(SelfTrainError,))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n" + steps_lib.format_table(summary))
    print(f"\nsummary: {os.path.join(summary['workdir'], SUMMARY_FILE)}")


if __name__ == "__main__":
    main()

"""student.selftrain's checks of its own flags and of the flags it passes on to each step.

The loop runs for hours (days on a TPU): a typo in a student's flags must not surface only
after the teacher has trained and the unlabeled set was labeled. So every step's flags are
parsed and range-checked here, with each step's own parser and checks, before the first step
starts, and every error names the loop flag that carried the bad value.
"""

import dataclasses
import glob
import os
import re
import shlex


class SelfTrainError(ValueError):
    """The loop cannot go on: a UsageError or a StepError."""


class UsageError(SelfTrainError):
    """A flag of the loop (or one it passes on) is wrong, or the workdir cannot be resumed with
    it; found before any step runs (exit status 2, as every entry point's usage errors)."""


class StepError(SelfTrainError):
    """A step's process failed or left no complete output (exit status 1)."""


# Flags of each step that the loop itself sets, and the loop flag a user sets instead.
OWNED = {
    "student.train": {"model": "--model or --student_model", "labeled": "--labeled", "eval": "--eval",
                      "model_dir": "--workdir", "pseudo": "the round's labels", "pseudo_run_id": "the round's labels"},
    "pipeline.label": {"teacher": "--teacher or the round's teacher", "input": "--unlabeled", "output": "--workdir",
                       "overwrite": "the loop (it passes --overwrite to replace an unfinished labeling run)"},
    "pipeline.report": {"labels": "the round's labels", "output": "--workdir", "format": "the loop (text + HTML)",
                        "holdout": "--holdout"},
}


def is_remote(path):
    return "://" in path or path.startswith("tfds:")


def absolute(path):
    """Local paths absolute (the steps and a rerun may start elsewhere); URLs and tfds: unchanged."""
    return path if not path or is_remote(path) else os.path.abspath(os.path.expanduser(path))


def check_exists(flag, path, what):
    """A local path (a glob may match instead) must exist; remote ones are the steps' to check."""
    if not path or is_remote(path):
        return
    if not (os.path.exists(path) or glob.glob(path)):
        raise UsageError(f"--{flag}={path}: no such {what}.")


def split(option, text):
    """'--a=1 --b' (one loop flag's value) -> ('--a=1', '--b'); every token must be a --flag."""
    try:
        tokens = shlex.split(text or "")
    except ValueError as error:
        raise UsageError(f"--{option}={text!r}: {error}.") from error
    for token in tokens:
        if not token.startswith("--") or len(token) < 3:
            raise UsageError(f"--{option}: {token!r} is not a flag; write each one as --name=value "
                                 "(or --name / --noname for a boolean).")
    return tuple(tokens)


def flag_name(token):
    return token[2:].split("=", 1)[0]


def check_not_owned(option, tokens, module):
    owned = OWNED[module]
    for token in tokens:
        name = flag_name(token)
        base = name[2:] if name.startswith("no") and name[2:] in owned else name
        if base in owned:
            raise UsageError(f"--{option} sets --{base} of {module}, which the loop sets itself from "
                                 f"{owned[base]}; leave it out.")


def _origin(message, sources, fallback):
    """The loop flag that carried the step flag a step's error message starts with."""
    match = re.search(r"--(\w+)", message)
    name = match.group(1) if match else ""
    names = {name, f"no{name}", name[2:] if name.startswith("no") else name}
    for option, tokens in reversed(sources):  # the last occurrence of a flag is the one a step uses
        if any(flag_name(token) in names for token in tokens):
            return f"--{option}"
    return fallback.get(name, "a flag the loop sets")


def _other_train_flags():
    from absl import app, flags, logging  # noqa: F401  (they define the flags every absl program takes)

    names = {name for name in flags.FLAGS if (flags.FLAGS.find_module_defining_flag(name) or "").startswith("absl")}
    # tf_logs: defined by student.train itself beside the TrainConfig fields (models/cli.py).
    return names | {"help", "helpshort", "helpfull", "helpxml", "tf_logs"}


def check_train_flags(arguments, sources, fallback):
    """Parses `arguments` as student.train would and runs its checks that need no data.

    sources: [(loop option, tokens)] that contributed to `arguments`, for the error message.
    fallback: {step flag: loop flag} for the flags the loop sets itself.
    """
    from absl import flags

    from student import config as config_lib

    values = flags.FlagValues()
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
    fields = dataclasses.fields(config_lib.TrainConfig)
    for field in fields:  # as student/train.py defines them, on a private FlagValues
        define[field.type](field.name, None if field.default is dataclasses.MISSING else field.default, "",
                           flag_values=values)
    try:
        rest = values(["student.train", *arguments], known_only=True)[1:]
    except flags.Error as error:
        raise UsageError(f"{_origin(str(error), sources, fallback)}: student.train would refuse it: "
                             f"{error}") from error
    builtins = _other_train_flags()
    for token in rest:
        if flag_name(token) not in builtins and flag_name(token)[2:] not in builtins:
            raise UsageError(f"{_origin(token, sources, fallback)}: {flag_name(token)!r} is not a flag of "
                                 "student.train.")
    config = config_lib.TrainConfig(**{field.name: values[field.name].value for field in fields})
    try:
        config_lib.validate(config)
    except config_lib.ConfigError as error:
        raise UsageError(f"{_origin(str(error), sources, fallback)}: student.train would refuse it: "
                             f"{error}") from error


def check_label_flags(arguments, option):
    """Parses the labeling job's flags and checks their ranges (the teacher's class count is not
    known before it trains, so --top_k is checked by the job itself)."""
    from pipeline import options

    try:
        settings, _ = options.parse(arguments)
        options.validate(options.resolve(settings, 1 << 20), 1 << 20)
    except options.UsageError as error:
        raise UsageError(f"--{option}: pipeline.label would refuse it: {error}") from error


def check_report_flags(arguments, option):
    from absl import flags

    from pipeline.report import cli as report

    values = report.define_flags()
    try:
        beam_args = values(["report", *arguments], known_only=True)[1:]
    except flags.Error as error:
        raise UsageError(f"--{option}: pipeline.report would refuse it: {error}") from error
    unknown = report.unknown_flags(beam_args)
    if unknown:
        raise UsageError(f"--{option}: {unknown} are neither flags of pipeline.report nor Beam options.")

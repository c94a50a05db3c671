"""What every entry point does the same way: --help, usage errors, misspelt flags, TF's log noise.

  --help         the program's own flags first, grouped, each with its default and (for enum
                 flags) its allowed values; exits 0.
  usage error    one line `PROG: error: MESSAGE` on stderr and exit status 2, argparse's
                 convention (so `python -m demo`, an argparse program, agrees); a failure at
                 run time prints the same line and exits 1.
  misspelt flag  `unknown flag --min_confidense; did you mean --min_confidence?`
  --tf_logs      TensorFlow's C++ log lines are hidden unless it is given (`quiet_tensorflow`).

Free of TensorFlow and Beam imports: `pipeline.report` and every `--help` use it without
loading either.
"""

import difflib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import textwrap

from absl import flags

USAGE_EXIT = 2
FAILURE_EXIT = 1
HELP_ARGS = ("-h", "--help", "-help", "--helpshort")
TF_LOGS = "tf_logs"
TF_LOGS_HELP = ("Show TensorFlow's C++ log lines (device probing such as a failed cuInit on a machine "
                "without a GPU, oneDNN notices), hidden by default; TF_CPP_MIN_LOG_LEVEL, when you set it, wins.")
_WIDTH = 100
LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIETED_LEVEL = "RESNET_RS_QUIETED_TF_LOG_LEVEL"  # the level quiet_tensorflow set, not the user


class UsageError(ValueError):
    """A wrong flag or flag combination, found before any work: the program exits 2."""


def quiet_tensorflow(argv=None):
    """Hides TensorFlow's C++ log lines unless `argv` holds --tf_logs or the user set the level.

    TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when its C++ library loads, so this must run
    before anything imports TensorFlow: the package `__init__`s call it, which is why it reads
    sys.argv directly instead of the parsed flags. Level 3 because a machine without a GPU
    logs its failed cuInit at ERROR level; real errors still raise Python exceptions.

    The level it sets is also recorded in QUIETED_LEVEL: a child process (student.selftrain's
    steps) inherits both, and given --tf_logs it removes a level that the record says came from
    here, while a level the user set (no record, or another value) still wins.
    """
    argv = sys.argv[1:] if argv is None else argv
    ours = QUIETED_LEVEL in os.environ and os.environ[QUIETED_LEVEL] == os.environ.get(LEVEL)
    if _wants_tf_logs(argv):
        if ours:
            del os.environ[LEVEL]
        os.environ.pop(QUIETED_LEVEL, None)  # a stale record must not claim a level set later
        return
    if LEVEL not in os.environ:
        os.environ[LEVEL] = os.environ[QUIETED_LEVEL] = "3"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def _wants_tf_logs(argv):
    """Whether `argv` turns --tf_logs on: the last of --tf_logs / --notf_logs wins, as absl parses
    them (student.selftrain passes --tf_logs on before a step's own flags, which may say no)."""
    wanted = False
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name == "--tf_logs":
            wanted = not equals or value.lower() in ("true", "t", "1")
        elif arg == "--notf_logs":
            wanted = False
    return wanted


class _QuietImport(importlib.abc.MetaPathFinder):
    """Filters what TensorFlow's C++ libraries print while `import tensorflow` loads them.

    Lines logged before absl's logging is initialised (the oneDNN notice, "Could not find cuda
    drivers") ignore TF_CPP_MIN_LOG_LEVEL, so during that one import file descriptor 2 goes to
    a temporary file, and its lines come back except those the level hides.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports are plain
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module
            spec.loader.exec_module = lambda module: _filtered_stderr(load, module)
        return spec


def _filtered_stderr(load, module):
    level = os.environ.get(LEVEL, "0")
    hidden = "IWE"[:int(level)] if level in ("1", "2", "3") else ""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            load(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                # absl's prefix: severity letter, MMDD, time; and the banner absl prints first.
                noise = re.match(r"[IWE]\d{4} ", line) and line[0] in hidden
                if not (noise or (hidden and line.startswith("WARNING: All log messages before absl::"))):
                    sys.stderr.write(line)
            sys.stderr.flush()


def wants_help(argv):
    return any(arg in HELP_ARGS for arg in argv)


def flag_names(values, names=None):
    """Every spelling --NAME that `values` accepts for `names` (default: all its flags), with
    --noNAME for booleans, as candidates for a misspelling."""
    names = list(values) if names is None else names
    return names + [f"no{name}" for name in names if isinstance(values[name].parser, flags.BooleanParser)]


def did_you_mean(name, candidates):
    """' did you mean --X?' for the candidate closest to `name`, or ''."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"; did you mean --{matches[0]}?" if matches else ""


def unknown_flags_message(arguments, candidates):
    """'unknown flag --X; did you mean --Y?' for each unknown argument (as typed: -x, --x=1)."""
    spelt = [argument.split("=", 1)[0] for argument in arguments]
    return "; ".join(f"unknown flag {flag}{did_you_mean(flag.lstrip('-'), candidates)}" for flag in spelt)


def parse_own_flags(values, prog, argv, error=UsageError):
    """Parses `argv` (without the program name) into `values`, flags only: an absl error, or
    a stray positional argument, raises `error` with the one-line message."""
    try:
        positional = values([prog, *argv])[1:]
    except flags.Error as problem:
        raise error(flag_error_message(problem, values)) from problem
    if positional:
        raise error(f"unexpected argument{'s' if len(positional) > 1 else ''} "
                    f"{', '.join(map(repr, positional))}; every setting is a --flag.")


def flag_error_message(error, values, candidates=None):
    """One line naming the flag for an absl flags.Error raised while `values` parsed argv."""
    candidates = flag_names(values) if candidates is None else candidates
    if isinstance(error, flags.UnrecognizedFlagError):
        return unknown_flags_message([f"--{error.flagname}"], candidates)
    text = str(error)
    # absl words a bad value as "flag --NAME=VALUE: why"; an enum's why lists the values.
    found = re.match(r"flag --([^=]+)=(.*?): ", text, re.DOTALL)
    if found and found.group(1) in values and isinstance(values[found.group(1)].parser, flags.EnumParser):
        name, value = found.groups()
        choices = values[name].parser.enum_values
        hint = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        return (f"--{name}={value} is not one of {', '.join(choices)}"
                + (f"; did you mean --{name}={hint[0]}?" if hint else "."))
    return text[len("flag "):] if found else text


def _spec(flag):
    if isinstance(flag.parser, flags.BooleanParser):
        return f"--[no]{flag.name}"
    if isinstance(flag.parser, flags.EnumParser):
        return f"--{flag.name}={{{','.join(flag.parser.enum_values)}}}"
    kind = {flags.IntegerParser: "INT", flags.FloatParser: "FLOAT"}.get(type(flag.parser), "TEXT")
    return f"--{flag.name}={kind}"


def _flag_lines(flag, required):
    text = flag.help or ""
    spec = _spec(flag)
    if isinstance(flag.parser, flags.EnumParser):  # absl prefixes "<a|b>: "; the spec shows {a,b}
        text = text.split(">: ", 1)[-1] if text.startswith("<") else text
        if len(spec) > 40:  # too many values for one line: listed in the help instead
            spec = f"--{flag.name}=NAME"
            text += f" One of: {', '.join(flag.parser.enum_values)}."
    if required:
        text += " Required."
    elif flag.default is not None:
        default = str(flag.default).lower() if isinstance(flag.default, bool) else flag.default
        text += f" (default: {default})"
    if len(spec) < 28:  # argparse's layout: a short spec and its help share the first line
        return textwrap.wrap(text, _WIDTH, initial_indent=f"  {spec:<28}", subsequent_indent=" " * 30)
    return [f"  {spec}"] + textwrap.wrap(text, _WIDTH, initial_indent=" " * 30, subsequent_indent=" " * 30)


def help_text(doc, values, groups, required=(), footer="", own=None):
    """`doc`, then the flags of `values` under each (title, [names]) of `groups`, then `footer`.

    Flags among `own` (default: all of `values`) that no group names are listed under "Other
    flags", so a flag added later is never missing from --help.
    """
    lines = [doc.strip("\n"), ""]
    grouped = [name for _, names in groups for name in names]
    leftover = [name for name in (list(values) if own is None else own) if name not in grouped]
    for title, names in list(groups) + ([("Other flags", leftover)] if leftover else []):
        lines.append(f"{title}:")
        for name in names:
            lines += _flag_lines(values[name], name in required)
        lines.append("")
    if footer:
        lines += textwrap.wrap(footer, _WIDTH) + [""]
    return "\n".join(lines)


def fail(prog, error, status=USAGE_EXIT):
    """Prints `PROG: error: ERROR` on stderr and exits with `status`."""
    message = " ".join(str(error).split("\n"))  # one line, whatever the exception says
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(status)


def run_main(prog, main, usage_errors=(), failures=()):
    """Calls `main()`: UsageError and `usage_errors` exit 2, `failures` exit 1, each as one line."""
    try:
        return main()
    except (UsageError, *usage_errors) as error:
        fail(prog, error, USAGE_EXIT)
    except failures as error:
        fail(prog, error, FAILURE_EXIT)


def absl_flags_parser(prog, help_fn, values=flags.FLAGS):
    """A `flags_parser` for absl's app.run: --help prints `help_fn()` and exits 0 (absl's own
    exits 1 and lists every module's flags, which --helpfull still does, exiting 0), and a bad
    flag is a one-line usage error that suggests the closest flag."""
    def parse(argv):
        if wants_help(argv[1:]):
            sys.stdout.write(help_fn())
            sys.exit(0)
        if "--helpfull" in argv[1:]:
            sys.stdout.write(values.get_help() + "\n")
            sys.exit(0)
        try:
            return values(argv)
        except flags.Error as error:
            fail(prog, flag_error_message(error, values))
    return parse

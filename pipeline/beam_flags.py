"""Beam's pipeline options as seen by the CLIs that pass them through (pipeline.label, pipeline.report).

Only Beam's public `PipelineOptions.get_all_options` is used; no TensorFlow is imported, so
pipeline.report stays light.
"""

from apache_beam.options.pipeline_options import PipelineOptions

HELP_FLAG = "--help_beam"
FOOTER = ("Beam pipeline options (--runner, --project, --region, --temp_location, --direct_num_workers, ...) "
          f"pass through to Beam; {HELP_FLAG} lists them.")


def option_names():
    """The destination names of every Beam pipeline option (e.g. 'runner', 'experiments')."""
    return sorted(PipelineOptions([]).get_all_options())


def unknown(args):
    """The arguments of `args` (as typed) that no Beam PipelineOptions class defines.

    Beam itself only warns about an unknown option and runs without it. Beam's parser knows
    every spelling (--experiment for experiments, --no_use_public_ips), so the options it
    cannot place are those it keeps only when told to retain unknown options.
    """
    # Beam's parser would print its help and exit on these; they are not options to pass on.
    helps = [arg for arg in args if arg.split("=", 1)[0] in ("-h", "--help")]
    rest = [arg for arg in args if arg not in helps]
    known = set(PipelineOptions([]).get_all_options())
    extra = set(PipelineOptions(rest).get_all_options(retain_unknown_options=True)) - known
    return [arg for arg in args if arg in helps or (arg.startswith("-") and _dest(arg) in extra)]


def _dest(arg):
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_")


def print_help(prog):
    """Prints Beam's own help: the options of every PipelineOptions class, as argparse lists them."""
    def show(parser):  # get_all_options hands its parser, every option added, to this hook
        parser.usage = f"python -m {prog} [its flags: --help] [Beam pipeline options, below]"
        parser.print_help()

    PipelineOptions([]).get_all_options(add_extra_args_fn=show)

"""The Beam labeling job: read, decode, label (RunInference), select, write, account, report.

Entry points: `python -m pipeline.label` (`pipeline.label.run(argv)`) and
`python -m pipeline.report`. Record formats: `pipeline.records`.
"""

from models import cli

# Before any module of this package imports TensorFlow (which reads the level once, on load):
# `python -m pipeline.label` and the console scripts import this package first.
cli.quiet_tensorflow()

"""The Beam labeling job, in two stages, and its report.

Stage 1, inference (`pipeline.predict`): inputs -> the prediction index (`pipeline.index`).
Stage 2, selection (`pipeline.select`): the index -> train records (`pipeline.records`),
fetching the kept images' bytes (`pipeline.fetch`) inside the shard writers (`pipeline.write`).
Entry points: `python -m pipeline.label` (both stages; `pipeline.label.run(argv)`),
`python -m pipeline.select` (stage 2 alone) and `python -m pipeline.report`
(`pipeline.report.cli`).
"""

from models import cli

# Before any module of this package imports TensorFlow (which reads the level once, on load):
# `python -m pipeline.label` and the console scripts import this package first.
cli.quiet_tensorflow()

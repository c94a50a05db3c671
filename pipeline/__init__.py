"""The Beam labeling job: read, decode, label (RunInference), select, write, account, report.

Entry points: `python -m pipeline.label` (`pipeline.label.run(argv)`) and
`python -m pipeline.report`. Record formats: `pipeline.records`.
"""

"""The label confidence report: read a labeling run before spending TPU time on a student.

  cli        the command line (`python -m pipeline.report`, console script resnet-rs-report)
  summary    read manifest.json and stats.json and summarise them as plain data (text, JSON)
  html       the summary as one self-contained HTML page
  svg        the page's inline SVG charts
  holdout    --holdout: the teacher's accuracy and calibration on labeled data (TensorFlow)
  recompute  --recompute: stats.json rebuilt from the records by a Beam job

Importing the package loads none of them: no TensorFlow, no Beam.
"""

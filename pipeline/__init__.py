"""The Beam labeling job: unlabeled images to filtered, class-balanced soft-label TFRecords."""

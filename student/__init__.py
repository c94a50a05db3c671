"""The student trainer: co-training on labeled and pseudo-labeled images in mixed batches."""

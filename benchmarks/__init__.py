"""Benchmarks: ratios measured in one run on the current machine (`make bench`)."""

"""Benchmarks: ratios measured in one run on the current machine (`make bench`)."""

import json
import os


def write_results(results, path):
    """Writes a benchmark's figures to `path` as JSON (its folder created) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"-> {path}")

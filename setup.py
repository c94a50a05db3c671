"""One distribution for the ResNet-RS self-training pipeline.

Also what Dataflow workers install (`--setup_file=./setup.py`), so every module a worker
needs lives in the four packages below.

Which TensorFlow: `tensorflow` by default (CPU; a Linux GPU with the `gpu` extra, which adds
CUDA and cuDNN as pip wheels to the same distribution). A TPU VM needs `tensorflow-tpu`, a
different distribution of the same `tensorflow` import package, and pip has no way to let
one distribution stand in for another: an extra can only add requirements, so `.[tpu]` would
install the CPU wheel and the TPU wheel into one directory. So the base requirement itself is
chosen when the package is built, by RESNET_RS_TENSORFLOW (default `tensorflow`):

  RESNET_RS_TENSORFLOW=tensorflow-tpu pip install -c constraints.txt . \
      -f https://storage.googleapis.com/libtpu-tf-releases/index.html

docker/Dockerfile's TPU image sets it for good, so a later install of this sdist (Dataflow's
--setup_file) cannot pull the CPU wheel in beside the TPU one. Every other requirement stays
in this one list, which the container installs too: there is no second copy to drift.
constraints.txt pins what must be identical on the launcher and the Dataflow workers (Beam).
"""

import os

import setuptools

TENSORFLOW_RANGE = ">=2.16,<2.22"
# TensorFlow's own distributions of the `tensorflow` package that this project can run on.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu")
TENSORFLOW = os.environ.get("RESNET_RS_TENSORFLOW", "tensorflow").strip() or "tensorflow"
if TENSORFLOW not in TENSORFLOW_DISTRIBUTIONS:
    raise SystemExit(f"RESNET_RS_TENSORFLOW={TENSORFLOW!r}: expected one of {', '.join(TENSORFLOW_DISTRIBUTIONS)} "
                     "(tensorflow-tpu on TPU VMs; GPUs use the default with the [gpu] extra).")

setuptools.setup(
    name="resnet-rs-selftrain",
    version="0.1.0",
    description="ResNet-RS teachers, a Beam soft-labeling job and a mixed-batch student trainer.",
    # Tested on 3.11 (the demo, CI and the containers use it); the range is what TensorFlow
    # 2.16-2.21, Keras >= 3.12 and Beam support together.
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["models", "teacher", "pipeline", "pipeline.report", "student"]),
    install_requires=[
        TENSORFLOW + TENSORFLOW_RANGE,
        # Teachers load with safe_mode; older Keras has published bypasses of it: CVE-2025-1550
        # (fixed 3.9), CVE-2025-8747/-9906 (3.11.0), CVE-2025-9905 (3.11.3), CVE-2025-12058 (3.12.0)
        # and CVE-2026-1462, the TFSMLayer bypass (3.12.1 on 3.12.x; 3.13.0 and 3.13.1 lack it).
        "keras>=3.12.1,!=3.13.0,!=3.13.1,<4",
        # Exact version for launcher and workers: constraints.txt (docker/Dockerfile installs with it).
        "apache-beam[gcp]>=2.60,<3",
        "tensorflow-datasets>=4.9,<5",
        "google-cloud-storage>=2.10,<4",
        "google-crc32c>=1.5",  # TFRecord framing of the labeling job's deterministic shards
        "h5py>=3.11",  # teacher/weights.py reads published .h5 weights; 3.11 is the first for NumPy 2
        "absl-py>=1.4",
        "numpy>=1.26",  # the first NumPy for Python 3.12
        "pillow>=10",
    ],
    entry_points={
        "console_scripts": [
            "resnet-rs-evaluate = teacher.evaluate:main",
            "resnet-rs-export-teacher = teacher.export:main",
            "resnet-rs-label = pipeline.label:main",
            "resnet-rs-report = pipeline.report.cli:main",
            "resnet-rs-select = pipeline.select:main",
            "resnet-rs-selftrain = student.selftrain:main",
            "resnet-rs-train = student.train:main",
        ],
    },
    extras_require={
        # TensorFlow's CUDA and cuDNN as pip wheels (no system CUDA needed; the NVIDIA driver is).
        # Only on the default distribution: with tensorflow-tpu it would add a second TensorFlow.
        **({"gpu": [f"tensorflow[and-cuda]{TENSORFLOW_RANGE}"]} if TENSORFLOW == "tensorflow" else {}),
        # TensorFlow 2.16-2.20 require a matching tensorboard themselves; 2.21 no longer brings one.
        "tensorboard": [f"tensorboard{TENSORFLOW_RANGE}"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "build>=1.0",
            # Reference implementation for parameter/weight equality tests only.
            f"tf_keras{TENSORFLOW_RANGE}",
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
            "gcp-storage-emulator>=2024.0",
            f"tensorboard{TENSORFLOW_RANGE}",  # tests/test_readme.py runs the README's tensorboard command
        ],
    },
)

"""One distribution for the ResNet-RS self-training pipeline.

Also what Dataflow workers install (`--setup_file=./setup.py`), so every module a worker
needs lives in the four packages below.
"""

import setuptools

setuptools.setup(
    name="resnet-rs-selftrain",
    version="0.1.0",
    description="ResNet-RS teachers, a Beam soft-labeling job and a mixed-batch student trainer.",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["models", "teacher", "pipeline", "student"]),
    install_requires=[
        "tensorflow>=2.16,<2.22",
        # Teachers load with safe_mode; older Keras has published bypasses of it: CVE-2025-1550
        # (fixed 3.9), CVE-2025-8747/-9906 (3.11.0), CVE-2025-9905 (3.11.3), CVE-2025-12058 (3.12.0)
        # and CVE-2026-1462, the TFSMLayer bypass (3.12.1 on 3.12.x; 3.13.0 and 3.13.1 lack it).
        "keras>=3.12.1,!=3.13.0,!=3.13.1,<4",
        "apache-beam[gcp]>=2.60,<3",
        "tensorflow-datasets>=4.9,<5",
        "google-cloud-storage>=2.10,<4",
        "google-crc32c>=1.5",  # TFRecord framing of the labeling job's deterministic shards
        "absl-py>=1.4",
        "numpy>=1.26",
        "pillow>=10",
    ],
    entry_points={
        "console_scripts": [
            "resnet-rs-export-teacher = teacher.export:main",
            "resnet-rs-label = pipeline.label:main",
            "resnet-rs-report = pipeline.report:main",
            "resnet-rs-train = student.train:main",
        ],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "build>=1.0",
            # Reference implementation for parameter/weight equality tests only.
            "tf_keras>=2.16,<2.22",
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
            "gcp-storage-emulator>=2024.0",
        ],
    },
)

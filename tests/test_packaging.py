"""setup.py, constraints.txt and docker/Dockerfile: the sdist Dataflow workers install (--setup_file),
extras per target, console scripts, and one Beam version for the launcher and the container.

Nothing here builds an image or reaches a network: the Dockerfile is read as text.
"""

import pathlib
import re
import runpy
import subprocess
import sys
import tarfile

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def setup_arguments(monkeypatch, tensorflow=None):
    """The keyword arguments setup.py passes to setuptools.setup (run here, nothing built)."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **arguments: captured.update(arguments))
    monkeypatch.chdir(ROOT)  # find_packages looks in the working directory
    if tensorflow is None:
        monkeypatch.delenv("RESNET_RS_TENSORFLOW", raising=False)
    else:
        monkeypatch.setenv("RESNET_RS_TENSORFLOW", tensorflow)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def requirements(lines):
    """{canonical distribution name: Requirement}."""
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


def constraints():
    """{distribution: exact version} from constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"constraints.txt pins exact versions; {line!r} does not"
            pins[requirement.name] = specifier.version
    return pins


def dockerfile_arguments():
    """{ARG name: default} from the Dockerfile's ARG lines with a default."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))


def dockerfile_instructions():
    """The Dockerfile without comments, continuation lines joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).replace("\\\n", " ")


def test_sdist_builds_and_holds_the_four_packages(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (sdist,) = tmp_path.glob("resnet[-_]rs[-_]selftrain-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for package in ("models", "teacher", "pipeline", "student"):
        assert f"{package}/__init__.py" in names
    assert "models/resnet_rs.py" in names and "setup.py" in names and "teacher/evaluate.py" in names
    assert "pipeline/report/__init__.py" in names and "pipeline/report/cli.py" in names  # the subpackage too
    assert "constraints.txt" in names  # `pip install -c constraints.txt` works from an unpacked sdist too
    assert not any(name.startswith("tests/") for name in names)


def test_container_beam_is_the_pinned_beam(monkeypatch):
    pins = constraints()
    arguments = dockerfile_arguments()
    # The boot program's image (BEAM_VERSION) and the SDK pip installs (constraints.txt) are one version...
    assert arguments["BEAM_VERSION"] == pins["apache-beam"]
    # ...that setup.py allows, so `pip install -c constraints.txt .` resolves.
    beam = requirements(setup_arguments(monkeypatch)["install_requires"])["apache-beam"]
    assert beam.specifier.contains(pins["apache-beam"]), (beam, pins["apache-beam"])
    instructions = dockerfile_instructions()
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam" in instructions
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in instructions
    assert re.search(r"COPY [^\n]*constraints\.txt", instructions)
    assert 'python -m pip install -c constraints.txt ".${extras}"' in instructions
    assert "found == '${BEAM_VERSION}'" in instructions  # a --build-arg that disagrees fails the build


def test_container_python_is_the_tested_python(monkeypatch):
    python = dockerfile_arguments()["PYTHON_VERSION"]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}" == "3.11"
    assert SpecifierSet(setup_arguments(monkeypatch)["python_requires"]).contains(f"{python}.0")
    instructions = dockerfile_instructions()
    assert "FROM python:${PYTHON_VERSION}-slim AS base" in instructions
    # One Python per image, and pip as that Python's module: no distribution pip beside it.
    assert "apt-get" not in instructions and "python3-pip" not in instructions and "nvidia/cuda" not in instructions


def test_dockerfile_keeps_no_requirement_list_of_its_own():
    """Every version the image installs comes from setup.py or constraints.txt (a second list drifts)."""
    instructions = dockerfile_instructions()
    installs = [found.strip() for found in re.findall(r"pip install ([^&\n]*)", instructions)]
    assert installs == ["--upgrade pip", '-c constraints.txt ".${extras}"'], installs
    assert not re.search(r"[\w\]-](==|>=|~=|<)\d", instructions)


def test_extras_per_target(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    base = requirements(arguments["install_requires"])
    extras = arguments["extras_require"]
    tensorflow = base["tensorflow"]
    assert set(extras) == {"gpu", "tensorboard", "test"}
    (gpu,) = map(Requirement, extras["gpu"])
    assert (gpu.name, gpu.extras, gpu.specifier) == ("tensorflow", {"and-cuda"}, tensorflow.specifier)
    (tensorboard,) = map(Requirement, extras["tensorboard"])
    assert tensorboard.name == "tensorboard" and tensorboard.specifier == tensorflow.specifier
    assert requirements(extras["test"])["tf-keras"].specifier == tensorflow.specifier
    # What the code imports directly is a requirement, not left to arrive with something else.
    assert {"h5py", "google-crc32c", "absl-py", "numpy", "pillow", "keras"} <= set(base)


def test_tpu_build_requires_tensorflow_tpu_instead_of_tensorflow(monkeypatch):
    default = requirements(setup_arguments(monkeypatch)["install_requires"])
    arguments = setup_arguments(monkeypatch, tensorflow="tensorflow-tpu")
    tpu = requirements(arguments["install_requires"])
    assert "tensorflow" not in tpu and tpu["tensorflow-tpu"].specifier == default["tensorflow"].specifier
    assert set(tpu) - {"tensorflow-tpu"} == set(default) - {"tensorflow"}  # everything else identical
    assert "gpu" not in arguments["extras_require"]  # it would add the CPU/GPU wheel beside the TPU one
    assert "ENV RESNET_RS_TENSORFLOW=tensorflow-tpu" in dockerfile_instructions()
    with pytest.raises(SystemExit, match="RESNET_RS_TENSORFLOW='tensorflow-gpu': expected one of"):
        setup_arguments(monkeypatch, tensorflow="tensorflow-gpu")


def test_every_console_script_is_an_importable_callable(monkeypatch):
    scripts = setup_arguments(monkeypatch)["entry_points"]["console_scripts"]
    assert "resnet-rs-evaluate = teacher.evaluate:main" in scripts
    checks = {}
    for script in scripts:
        name, target = (part.strip() for part in script.split("="))
        module, _, attribute = target.partition(":")
        # A fresh process each, as a console script runs: some entry modules define global absl
        # flags at import, and two of them (teacher.export, student.train) both define --model.
        check = (f"import importlib, sys; "
                 f"sys.exit(not callable(getattr(importlib.import_module({module!r}), {attribute!r})))")
        checks[name] = subprocess.Popen([sys.executable, "-c", check], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
    for name, process in checks.items():
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {errors[-2000:]}"

"""What `pip install .` and `pipx install .` install: a wheel with the command, the
license and the data files, and dependencies bounded to the versions the tests run on."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_license_is_the_apache_2_0_text_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()

    assert PROJECT["license"] == "Apache-2.0"  # an SPDX expression (PEP 639)
    assert PROJECT["license-files"] == ["LICENSE"]
    assert metadata.metadata("kafka-onnx-pipeline")["License-Expression"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("requirement", PROJECT["dependencies"])
def test_installed_dependencies_are_within_the_bounds(requirement: str) -> None:
    wanted = Requirement(requirement)

    installed = metadata.version(wanted.name)

    assert wanted.specifier.contains(installed, prereleases=True), (
        f"{wanted.name} {installed} is outside {wanted.specifier}: the tests ran on "
        "another version than pyproject promises"
    )


@pytest.mark.parametrize(("name", "below"), [("confluent-kafka", "2.17"), ("uvicorn", "0.55")])
def test_the_libraries_the_readme_relies_on_have_an_upper_bound(name: str, below: str) -> None:
    (requirement,) = [Requirement(r) for r in PROJECT["dependencies"] if r.startswith(name)]

    assert not requirement.specifier.contains(below)


def test_the_wheel_holds_the_command_the_license_and_the_data(tmp_path: Path) -> None:
    leftovers = [ROOT / "build", ROOT / "kafka_onnx_pipeline.egg-info"]
    existed = {path for path in leftovers if path.exists()}
    try:
        _check_wheel(tmp_path)
    finally:  # setuptools builds in the tree: leave it as it was
        for path in set(leftovers) - existed:
            shutil.rmtree(path, ignore_errors=True)


def _check_wheel(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("kafka_onnx_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert "pipeline/py.typed" in names and "pipeline/dev/_kafka/pom.xml" in names
    assert "pipeline/_schemas/prediction.schema.json" in names  # --output-format jsonschema
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pipeline = pipeline.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

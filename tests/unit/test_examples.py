"""`pipeline models examples DIR`: the example models reach a tool installed without the
checkout. The wheel is built and installed here, and the installed copy does the work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.engine.models import ModelStore
from pipeline.errors import ConfigError
from pipeline.importer.examples import copy_examples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.relative_to(ROOT / "models") for p in (ROOT / "models").glob("*/*/*"))


def test_every_example_version_is_copied_and_a_version_already_there_is_kept(
    tmp_path: Path,
) -> None:
    store = tmp_path / "new" / "store"
    copied = copy_examples(store)
    assert {(c.name, c.version) for c in copied} == {p.parts[:2] for p in EXAMPLES}
    assert all(c.copied for c in copied)
    for relative in EXAMPLES:
        assert (store / relative).read_bytes() == (ROOT / "models" / relative).read_bytes()
    assert ModelStore(store).names() == ModelStore(ROOT / "models").names()

    mine = store / "card-fraud" / "1" / "model.json"
    mine.write_text("{}")  # the user's own edit
    again = copy_examples(store)
    assert not any(c.copied for c in again)
    assert mine.read_text() == "{}"
    assert not list(store.glob("*/.*"))  # no half-copied version left behind


def test_a_file_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'f'} is a file"):
        copy_examples(tmp_path / "f")


def test_the_installed_wheel_carries_the_examples_and_copies_them_anywhere(
    tmp_path: Path,
) -> None:
    # The wheel is built from a copy of what the Dockerfile copies, outside the checkout.
    src = _mkdir(tmp_path / "src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "pipeline", src / "pipeline", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "models", src / "models")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    wheels = tmp_path / "wheels"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    inside = {n for n in zipfile.ZipFile(wheel).namelist() if "/_models/" in n}
    assert inside == {f"pipeline/dev/_models/{p}" for p in EXAMPLES}

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True,
                   capture_output=True)  # fmt: skip
    cwd = _mkdir(tmp_path / "elsewhere")
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import pipeline; "
        f"assert pipeline.__file__.startswith({str(site)!r}), pipeline.__file__; "
        "from pipeline.cli import main; sys.exit(main(['models', 'examples', 'mine']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, text=True,
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"--models {cwd / 'mine'}" in done.stdout
    assert ModelStore(cwd / "mine").names() == ModelStore(ROOT / "models").names()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

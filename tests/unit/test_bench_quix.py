"""Whether the Quix Streams peer can run, and the reason its row gives when it cannot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.dev.bench.contenders import quix_contender


def test_an_interpreter_without_quixstreams_is_not_run(tmp_path: Path) -> None:
    row = quix_contender(tmp_path / "no-such-python")

    assert row.not_run is not None and "quixstreams is not installed" in row.not_run


def test_an_interpreter_that_cannot_import_the_peer_is_not_run_with_the_import_error(
    tmp_path: Path,
) -> None:
    # a Quix venv made before the project began to import msgspec: quixstreams imports,
    # the peer (which imports this checkout) does not, and every run of it failed
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        '  "import quixstreams") exit 0 ;;\n'
        "  *) echo \"ModuleNotFoundError: No module named 'msgspec'\" >&2; exit 1 ;;\n"
        "esac\n"
    )
    python.chmod(0o755)

    row = quix_contender(python)

    assert row.not_run is not None
    assert "has quixstreams but cannot import the peer" in row.not_run
    assert "No module named 'msgspec'" in row.not_run


def test_this_interpreter_imports_the_peer_once_quixstreams_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "quixstreams.py").write_text("")  # a stand-in: the check only imports
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    row = quix_contender(Path(sys.executable))

    assert row.not_run is None
    assert row.python == sys.executable

"""The generated gRPC code is what schemas/*.proto give: regenerate it and compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.dev.protos import TARGET, generate


def test_generated_code_matches_the_contracts(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in TARGET.iterdir() if p.is_file()}
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"regenerate with `python -m pipeline.dev.protos`: {stale} differ"

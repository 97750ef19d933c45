"""Shared test set-up: tests under tests/integration/ are marked `integration` automatically."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "reliability" in parts:
            item.add_marker(pytest.mark.reliability)

"""The replay report: counts, agreement, quantiles, the largest differences and the
confusion table, as JSON and as text; and the replay command's time flags."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dev.cli import _time_ms
from pipeline.engine.compare import Comparison
from pipeline.engine.diff import DiffReport
from pipeline.errors import ConfigError


def test_the_report_keeps_the_largest_differences_and_counts_the_confusion() -> None:
    report = DiffReport("fraud", "2", largest_n=2, events=5, predicted=5)
    first = Comparison(3, ["a", "a", "b"], ["a", "b", "b"], np.array([0.1, 0.9, 0.0]))
    second = Comparison(2, ["b", "a"], ["a", "a"], np.array([0.95, 0.2]))
    report.add(first, ["e1", "e2", "e3"], ["t/0/1", "t/0/2", "t/0/3"], "1")
    report.add(second, ["e4", "e5"], ["t/1/1", "t/1/2"], "1")
    doc = report.as_dict()
    assert doc["compared"] == 5 and doc["agreed"] == 3 and doc["agreement"] == 0.6
    assert [(e["id"], e["difference"]) for e in doc["largest"]] == [("e4", 0.95), ("e2", 0.9)]
    assert doc["score_difference"]["max"] == 0.95
    assert doc["score_difference"]["p50"] == pytest.approx(0.2)
    assert doc["confusion"] == [
        {"served": "a", "candidate": "a", "rows": 2},
        {"served": "a", "candidate": "b", "rows": 1},
        {"served": "b", "candidate": "a", "rows": 1},
        {"served": "b", "candidate": "b", "rows": 1},
    ]
    table = report.table()
    assert "label agreement               3  (60.00%)" in table
    assert "0.9500  e4  (t/1/1)  b -> a" in table
    assert table.splitlines()[-2].split() == ["a", "2", "1"]


def test_a_report_without_labels_shows_no_agreement() -> None:
    report = DiffReport("regressor", "2")
    report.add(
        Comparison(2, None, None, np.array([0.5, 0.25])), ["x", "y"], ["t/0/0", "t/0/1"], "1"
    )
    doc = report.as_dict()
    assert doc["agreed"] is None and doc["agreement"] is None and doc["confusion"] == []
    assert "label agreement" not in report.table()


def test_times_are_milliseconds_or_iso_8601() -> None:
    assert _time_ms("1796540000000", "--from-time") == 1796540000000
    assert _time_ms("2026-12-06T09:00:00Z", "--from-time") == 1796547600000
    assert _time_ms("2026-12-06T09:00:00", "--from-time") == 1796547600000  # UTC unless said
    with pytest.raises(ConfigError, match="--to-time takes milliseconds since the epoch"):
        _time_ms("yesterday", "--to-time")

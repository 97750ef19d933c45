"""A latency point's figures from made-up receive times (`pipeline.dev.bench.latency`).

Pins that the warm-up is left out, that a windowed phase gets each window's own
percentiles (a stall in one window shows there, not averaged away), and that a window
nothing arrived in says so instead of a figure.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.dev.bench.latency import Batching, Phase, _point


class _Sampler:
    def figures(self) -> Any:
        return type("Figures", (), {"peak_rss_mb": 100.0})()


def _got(rate: float, seconds: float, slow: tuple[float, float] = (0, 0)) -> list[Any]:
    """(ts, end-to-end ms, worker ms) for `rate` events a second; 100 ms each in `slow`."""
    start = 1_000_000
    got = []
    for n in range(int(rate * seconds)):
        ts = start + int(n * 1000 / rate)
        late = slow[0] * 1000 <= ts - start < slow[1] * 1000
        got.append((ts, 100.0 if late else 10.0, 5.0))
    return got


def test_each_window_has_its_own_percentiles_after_the_warm_up() -> None:
    phase = Phase("2,000 events/s", 2000, None, seconds=3.0, warmup_s=1.0, windows=3)
    got = _got(2000, 4.0, slow=(0.0, 1.0))  # the warm-up's events were slow: left out
    got += [(ts, 100.0, 5.0) for ts, _, _ in _got(2000, 4.0) if 2_000 <= ts - 1_000_000 < 2_050]
    point = _point(Batching(latency_target_ms=20), phase, {"sent": 8000, "seconds": 4.0, "max_lag_ms": 0},
                   got, 0.5, 0.3, _Sampler(), {})  # type: ignore[arg-type]  # fmt: skip

    assert point["window_s"] == 1.0
    assert [w["events"] for w in point["windows"]] == [2000, 2100, 2000]
    first, second, third = point["windows"]
    assert first["p99_ms"] == third["p99_ms"] == 10.0
    assert second["p99_ms"] == pytest.approx(100.0)  # the 100 slow ones: 4.8% of its events
    assert point["events"] == 6100


def test_a_window_nothing_arrived_in_has_no_figures() -> None:
    phase = Phase("2,000 events/s", 2000, None, seconds=2.0, warmup_s=0.0, windows=2)
    point = _point(Batching(), phase, {"sent": 2000, "seconds": 2.0, "max_lag_ms": 0},
                   _got(2000, 1.0), 0.5, 0.3, _Sampler(), {})  # type: ignore[arg-type]  # fmt: skip

    assert point["windows"][0]["events"] == 2000
    assert point["windows"][1] == {
        "events": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None,
    }  # fmt: skip


def test_a_phase_of_one_window_has_none() -> None:
    phase = Phase("50%", 1000, 0.5, seconds=1.0, warmup_s=0.0)
    point = _point(Batching(), phase, {"sent": 1000, "seconds": 1.0, "max_lag_ms": 0},
                   _got(1000, 1.0), 0.5, 0.3, _Sampler(), {})  # type: ignore[arg-type]  # fmt: skip

    assert point["window_s"] is None and point["windows"] == []

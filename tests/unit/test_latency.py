"""The latency target: a cost line fitted from batches, an arrival rate, and the wait and
cap they give."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.batching import MicroBatcher
from pipeline.engine.latency import LatencyTarget

KEY = ("m", "1")


def _fitted(fixed: float, per_row: float, target_ms: float = 20) -> LatencyTarget:
    target = LatencyTarget(target_ms, max_batch_size=1024)
    for rows in (1, 8, 64, 256, 32, 128):
        target.observe(KEY, rows, fixed + per_row * rows)
    return target


def _arriving(target: LatencyTarget, rows_per_s: float, seconds: float = 10.0) -> float:
    """Rows arrive at `rows_per_s` in chunks of 10 for `seconds`; return the clock after."""
    now, step = 0.0, 10 / rows_per_s
    while now < seconds:
        target.added(KEY, 10, now)
        now += step
    return now


def test_the_fit_finds_the_fixed_cost_and_the_cost_per_row() -> None:
    target = _fitted(0.0002, 0.00001)  # 0.2 ms + 10 us per row
    assert target.cost_s(KEY, 100) == pytest.approx(0.0012, rel=1e-3)
    # budget 10 ms; the cap fits half of it: 0.2 ms + 10 us * b <= 5 ms
    assert target.cap(KEY) == 480


def test_a_dear_model_caps_lower() -> None:
    cheap, dear = _fitted(0.0001, 0.000001), _fitted(0.002, 0.0001)
    assert cheap.cap(KEY) == 1024
    assert dear.cap(KEY) == 30  # 2 ms + 0.1 ms * b <= 5 ms


def test_light_load_cuts_a_single_row_at_once() -> None:
    target = _fitted(0.0002, 0.00001)
    _arriving(target, 100)  # 100 rows/s: inference needs 100 * 0.21 ms = 2% of the time
    assert target.wait_s(KEY, 1) == 0.0


def test_heavy_load_waits_for_a_batch_that_keeps_up() -> None:
    target = _fitted(0.001, 0.00001)  # 1 ms a batch + 10 us a row
    _arriving(target, 20_000)  # a row every 50 us: batches of 1 would need 20x the time
    # keeping inference at half the time: 20,000 * (1 ms / b + 10 us) <= 0.5 -> b >= 66.7
    assert 0 < target.wait_s(KEY, 10) <= 0.010 - target.cost_s(KEY, 10)
    assert target.wait_s(KEY, 10) == pytest.approx((66.7 - 10) / 20_000, rel=0.01)
    assert target.wait_s(KEY, 67) == 0.0


def test_overload_fills_batches_up_to_the_budget() -> None:
    target = _fitted(0.001, 0.0001)  # 0.1 ms a row: 20,000 rows/s cannot be kept up with
    _arriving(target, 20_000)
    assert target.wait_s(KEY, 10) == pytest.approx(0.010 - target.cost_s(KEY, 10))


def test_before_any_batch_rows_leave_at_once_and_cap_at_the_maximum() -> None:
    target = LatencyTarget(30, max_batch_size=256)
    target.added(KEY, 5, 0.0)
    assert target.wait_s(KEY, 5) == 0.0
    assert target.cap(KEY) == 256


def test_the_batcher_cuts_at_the_target_cap_and_wait() -> None:
    target = _fitted(0.002, 0.0001)  # dear: cap 30
    now = [_arriving(target, 20_000)]  # 2 s of inference a second: more than it can do
    batcher: MicroBatcher[int] = MicroBatcher(max_batch_size=1024, clock=lambda: now[0],
                                              sizing=target)  # fmt: skip
    full = batcher.add(KEY, {"x": np.zeros((70, 3), dtype=np.float32)}, 0)
    assert [b.rows for b in full] == [30, 30]
    wait = target.wait_s(KEY, 10)  # the budget less the batch's cost
    assert wait == pytest.approx(0.010 - target.cost_s(KEY, 10))
    assert wait > 0 and batcher.due() == []
    now[0] += wait
    (rest,) = batcher.due()
    assert rest.rows == 10

"""The latency target: a cost line fitted from batches, and the wait and cap it gives."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.batching import MicroBatcher
from pipeline.engine.latency import LatencyTarget

KEY = ("m", "1")


def test_the_fit_finds_the_fixed_cost_and_the_cost_per_row() -> None:
    target = LatencyTarget(20, max_batch_size=1024)
    for rows in (1, 8, 64, 256, 32, 128):
        target.observe(KEY, rows, 0.0002 + 0.00001 * rows)  # 0.2 ms + 10 us per row
    assert target.cost_s(KEY, 100) == pytest.approx(0.0012, rel=1e-3)
    # budget 10 ms; the cap fits half of it: 0.2 ms + 10 us * b <= 5 ms
    assert target.cap(KEY) == 480
    assert target.wait_s(KEY, 100) == pytest.approx(0.010 - 0.0012, rel=1e-3)


def test_a_dear_model_waits_less_and_caps_lower() -> None:
    cheap, dear = LatencyTarget(20, max_batch_size=1024), LatencyTarget(20, max_batch_size=1024)
    for rows in (1, 16, 256):
        cheap.observe(KEY, rows, 0.0001 + 0.000001 * rows)
        dear.observe(KEY, rows, 0.002 + 0.0001 * rows)
    assert dear.wait_s(KEY, 10) < cheap.wait_s(KEY, 10)
    assert dear.cap(KEY) < cheap.cap(KEY) == 1024
    assert dear.cap(KEY) == 30  # 2 ms + 0.1 ms * b <= 5 ms


def test_before_any_batch_it_waits_the_whole_budget_and_caps_at_the_maximum() -> None:
    target = LatencyTarget(30, max_batch_size=256)
    assert target.wait_s(KEY, 5) == pytest.approx(0.015)
    assert target.cap(KEY) == 256


def test_the_batcher_cuts_at_the_target_cap_and_wait() -> None:
    now = [100.0]
    target = LatencyTarget(20, max_batch_size=1024)
    for rows in (1, 16, 256):
        target.observe(KEY, rows, 0.002 + 0.0001 * rows)  # dear: cap 30
    batcher: MicroBatcher[int] = MicroBatcher(max_batch_size=1024, clock=lambda: now[0],
                                              sizing=target)  # fmt: skip
    full = batcher.add(KEY, np.zeros((70, 3), dtype=np.float32), 0)
    assert [b.rows for b in full] == [30, 30]
    assert batcher.due() == []
    now[0] += target.wait_s(KEY, 10)
    (rest,) = batcher.due()
    assert rest.rows == 10

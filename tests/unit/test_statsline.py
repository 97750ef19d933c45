"""The stats line: rates, mean batch size, latency percentiles and totals, on a fake clock,
fed through the sensor events the worker and the engine report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.metrics.statsline import StatsLine, StatsSnapshot


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stats(clock: FakeClock) -> StatsLine:
    return StatsLine(interval_s=5.0, clock=clock.now)


def fill(
    stats: StatsLine,
    *,
    events_in: int,
    batches: list[int],
    latencies: list[float],
    dead_letters: int,
    partitions: int = 1,
) -> None:
    """Record an interval's work the way the worker and the engine report it."""
    stats.records_consumed("in", events_in)
    for rows in batches:
        stats.inference("m", "1", rows, 0.001, 0.001)
    if latencies:
        stats.predictions("m", "1", np.asarray(latencies) / 1000.0)
    stats.dead_letters("validate", "NonNumeric", dead_letters)
    stats.partitions(partitions, 0)


def test_due_once_the_interval_has_passed_and_again_after_a_snapshot(
    stats: StatsLine, clock: FakeClock
) -> None:
    assert not stats.due()
    clock.advance(4.75)
    assert not stats.due()
    clock.advance(0.25)
    assert stats.due()

    stats.snapshot()

    assert not stats.due()
    clock.advance(5.0)
    assert stats.due()


def test_snapshot_figures_and_line(stats: StatsLine, clock: FakeClock) -> None:
    fill(
        stats,
        events_in=105,
        batches=[10, 20, 30, 40],
        latencies=[float(ms) for ms in range(1, 101)],
        dead_letters=5,
    )
    clock.advance(5.0)

    stats.partitions(4, 0)
    snap = stats.snapshot()

    assert snap.seconds == 5.0
    assert (snap.events_in, snap.predictions, snap.dead_letters) == (105, 100, 5)
    assert (snap.batches, snap.batch_rows, snap.partitions) == (4, 100, 4)
    assert snap.latency_p50_ms == pytest.approx(50.5)
    assert snap.latency_p99_ms == pytest.approx(99.01)
    assert snap.totals == {
        "events_in": 105,
        "out": 105,
        "dead_letters": 5,
        "requests": 0,
        "answered": 0,
    }
    assert snap.line() == (
        "in 21/s out 21/s mean batch 25.0 latency p50 50.5 ms p99 99.0 ms "
        "dlq 5 (total 5) partitions 4 total in 105 out 105"
    )


def test_counters_reset_and_totals_accumulate_across_snapshots(
    stats: StatsLine, clock: FakeClock
) -> None:
    fill(stats, events_in=50, batches=[25, 25], latencies=[3.0] * 48, dead_letters=2)
    clock.advance(5.0)
    stats.snapshot()

    fill(stats, events_in=20, batches=[20], latencies=[7.0] * 17, dead_letters=3, partitions=3)
    clock.advance(10.0)
    second = stats.snapshot()

    assert second.seconds == 10.0
    assert (second.events_in, second.predictions, second.dead_letters) == (20, 17, 3)
    assert (second.batches, second.batch_rows) == (1, 20)
    assert second.latency_p50_ms == second.latency_p99_ms == 7.0
    assert second.totals == {
        "events_in": 70,
        "out": 70,
        "dead_letters": 5,
        "requests": 0,
        "answered": 0,
    }
    assert second.line() == (
        "in 2/s out 2/s mean batch 20.0 latency p50 7.0 ms p99 7.0 ms "
        "dlq 3 (total 5) partitions 3 total in 70 out 70"
    )


def test_an_idle_interval_has_no_latencies_and_zero_rates(
    stats: StatsLine, clock: FakeClock
) -> None:
    fill(stats, events_in=10, batches=[10], latencies=[1.0] * 10, dead_letters=0)
    clock.advance(5.0)
    stats.snapshot()
    clock.advance(5.0)

    idle = stats.snapshot()

    assert idle.latency_p50_ms is None
    assert idle.latency_p99_ms is None
    assert idle.line() == (
        "in 0/s out 0/s mean batch 0.0 latency p50 - ms p99 - ms "
        "dlq 0 (total 0) partitions 1 total in 10 out 10"
    )


def test_a_snapshot_taken_at_once_does_not_divide_by_zero(stats: StatsLine) -> None:
    fill(stats, events_in=3, batches=[3], latencies=[1.0, 2.0, 3.0], dead_letters=0)

    stats.partitions(0, 0)
    snap = stats.snapshot()

    assert snap.seconds == 0.0
    assert snap.line().startswith("in 0/s out 0/s mean batch 3.0 latency p50 2.0 ms p99 3.0 ms")


def test_the_interval_runs_from_the_previous_snapshot_not_from_due(
    stats: StatsLine, clock: FakeClock
) -> None:
    clock.advance(7.0)  # the worker was busy past the interval
    assert stats.due()
    stats.snapshot()
    clock.advance(2.5)

    stats.records_consumed("in", 10)
    snap = stats.snapshot()

    assert snap.seconds == 2.5
    assert snap.line().startswith("in 4/s ")


def test_a_snapshot_totals_are_a_copy() -> None:
    clock = FakeClock()
    stats = StatsLine(interval_s=1.0, clock=clock.now)
    stats.records_consumed("in", 1)
    first = stats.snapshot()

    stats.records_consumed("in", 1)
    stats.snapshot()

    assert first.totals["events_in"] == 1


def test_a_snapshot_is_frozen() -> None:
    snap = StatsSnapshot(
        seconds=1.0,
        events_in=0,
        predictions=0,
        dead_letters=0,
        batches=0,
        batch_rows=0,
        latency_p50_ms=None,
        latency_p99_ms=None,
        partitions=0,
    )

    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.seconds = 2.0  # type: ignore[misc]
    assert snap.totals == {}


def test_a_long_interval_keeps_a_bounded_sample_of_latencies(
    stats: StatsLine, clock: FakeClock
) -> None:
    for _ in range(300):
        stats.predictions("m", "1", np.arange(1000, dtype=np.float64) % 100 / 1000.0)
    assert stats.latency_samples <= 10_000
    clock.advance(5.0)
    snap = stats.snapshot()
    assert snap.predictions == 300_000
    assert snap.latency_p50_ms is not None and 40 <= snap.latency_p50_ms <= 60


def test_the_servers_line_shows_requests_and_predictions_and_no_kafka_figures(
    clock: FakeClock,
) -> None:
    """Issue 26 item 9: `pipeline serve` logged `dlq 0 ... partitions 0 total in 0 out 0`."""
    stats = StatsLine(interval_s=5.0, kind="doors", clock=clock.now)
    for _ in range(10):
        stats.request("http", "200", 0.01)
        stats.answered("m", "1", 3)
    stats.inference("m", "1", rows=30, queue_wait_s=0.0, infer_s=0.001)
    clock.advance(5.0)

    line = stats.snapshot().line()

    assert line == "requests 2/s predictions 6/s mean batch 30.0 total requests 10 predictions 30"


def test_a_share_members_line_has_no_partitions() -> None:
    """Issue 26 item 9: share-group members showed `partitions 0` while working."""
    clock = FakeClock()
    stats = StatsLine(interval_s=5.0, kind="share", clock=clock.now)
    stats.records_consumed("t", 10)
    clock.advance(5.0)
    line = stats.snapshot().line()
    assert "partitions" not in line
    assert line.startswith("in 2/s out 0/s mean batch")

"""The stats line: rates, mean batch size, latency percentiles and totals, on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.kafka.stats import Stats, StatsSnapshot


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
def stats(clock: FakeClock) -> Stats:
    return Stats(interval_s=5.0, clock=clock.now)


def fill(
    stats: Stats,
    *,
    events_in: int,
    batches: list[int],
    latencies: list[float],
    dead_letters: int,
) -> None:
    """Record an interval's work the way the worker does."""
    stats.events_in += events_in
    for rows in batches:
        stats.batch(rows)
    for latency in latencies:
        stats.prediction(latency)
    stats.dead_letters += dead_letters


def test_due_once_the_interval_has_passed_and_again_after_a_snapshot(
    stats: Stats, clock: FakeClock
) -> None:
    assert not stats.due()
    clock.advance(4.75)
    assert not stats.due()
    clock.advance(0.25)
    assert stats.due()

    stats.snapshot(partitions=1)

    assert not stats.due()
    clock.advance(5.0)
    assert stats.due()


def test_snapshot_figures_and_line(stats: Stats, clock: FakeClock) -> None:
    fill(
        stats,
        events_in=105,
        batches=[10, 20, 30, 40],
        latencies=[float(ms) for ms in range(1, 101)],
        dead_letters=5,
    )
    clock.advance(5.0)

    snap = stats.snapshot(partitions=4)

    assert snap.seconds == 5.0
    assert (snap.events_in, snap.predictions, snap.dead_letters) == (105, 100, 5)
    assert (snap.batches, snap.batch_rows, snap.partitions) == (4, 100, 4)
    assert snap.latency_p50_ms == pytest.approx(50.5)
    assert snap.latency_p99_ms == pytest.approx(99.01)
    assert snap.totals == {"events_in": 105, "out": 105, "dead_letters": 5}
    assert snap.line() == (
        "in 21/s out 21/s mean batch 25.0 latency p50 50.5 ms p99 99.0 ms "
        "dlq 5 (total 5) partitions 4 total in 105 out 105"
    )


def test_counters_reset_and_totals_accumulate_across_snapshots(
    stats: Stats, clock: FakeClock
) -> None:
    fill(stats, events_in=50, batches=[25, 25], latencies=[3.0] * 48, dead_letters=2)
    clock.advance(5.0)
    stats.snapshot(partitions=2)

    fill(stats, events_in=20, batches=[20], latencies=[7.0] * 17, dead_letters=3)
    clock.advance(10.0)
    second = stats.snapshot(partitions=3)

    assert second.seconds == 10.0
    assert (second.events_in, second.predictions, second.dead_letters) == (20, 17, 3)
    assert (second.batches, second.batch_rows) == (1, 20)
    assert second.latency_p50_ms == second.latency_p99_ms == 7.0
    assert second.totals == {"events_in": 70, "out": 70, "dead_letters": 5}
    assert second.line() == (
        "in 2/s out 2/s mean batch 20.0 latency p50 7.0 ms p99 7.0 ms "
        "dlq 3 (total 5) partitions 3 total in 70 out 70"
    )


def test_an_idle_interval_has_no_latencies_and_zero_rates(stats: Stats, clock: FakeClock) -> None:
    fill(stats, events_in=10, batches=[10], latencies=[1.0] * 10, dead_letters=0)
    clock.advance(5.0)
    stats.snapshot(partitions=1)
    clock.advance(5.0)

    idle = stats.snapshot(partitions=1)

    assert idle.latency_p50_ms is None
    assert idle.latency_p99_ms is None
    assert idle.line() == (
        "in 0/s out 0/s mean batch 0.0 latency p50 - ms p99 - ms "
        "dlq 0 (total 0) partitions 1 total in 10 out 10"
    )


def test_a_snapshot_taken_at_once_does_not_divide_by_zero(stats: Stats) -> None:
    fill(stats, events_in=3, batches=[3], latencies=[1.0, 2.0, 3.0], dead_letters=0)

    snap = stats.snapshot(partitions=0)

    assert snap.seconds == 0.0
    assert snap.line().startswith("in 0/s out 0/s mean batch 3.0 latency p50 2.0 ms p99 3.0 ms")


def test_the_interval_runs_from_the_previous_snapshot_not_from_due(
    stats: Stats, clock: FakeClock
) -> None:
    clock.advance(7.0)  # the worker was busy past the interval
    assert stats.due()
    stats.snapshot(partitions=1)
    clock.advance(2.5)

    stats.events_in += 10
    snap = stats.snapshot(partitions=1)

    assert snap.seconds == 2.5
    assert snap.line().startswith("in 4/s ")


def test_a_snapshot_totals_are_a_copy() -> None:
    clock = FakeClock()
    stats = Stats(interval_s=1.0, clock=clock.now)
    stats.events_in = 1
    first = stats.snapshot(partitions=1)

    stats.events_in = 1
    stats.snapshot(partitions=1)

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
    stats: Stats, clock: FakeClock
) -> None:
    for n in range(300_000):
        stats.prediction(float(n % 100))
    assert stats.latency_samples <= 10_000
    clock.advance(5.0)
    snap = stats.snapshot(1)
    assert snap.predictions == 300_000
    assert snap.latency_p50_ms is not None and 40 <= snap.latency_p50_ms <= 60

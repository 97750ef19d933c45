"""The worker's running figures, and the one stats line it logs every few seconds.

Counts events in and out, batches and their rows, dead-letter records, and the
event-to-prediction latency (from the event's time to the broker's acknowledgement of
its prediction) over each interval.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Stats", "StatsSnapshot"]

log = logging.getLogger("pipeline.stats")
_MAX_SAMPLES = 5_000  # latencies kept per interval: every stride-th, thinned as it grows


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Figures over one interval."""

    seconds: float
    events_in: int
    predictions: int
    dead_letters: int
    batches: int
    batch_rows: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    partitions: int
    totals: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """The human-readable stats line."""
        rate = 1.0 / self.seconds if self.seconds > 0 else 0.0
        mean_batch = self.batch_rows / self.batches if self.batches else 0.0
        p50 = "-" if self.latency_p50_ms is None else f"{self.latency_p50_ms:.1f}"
        p99 = "-" if self.latency_p99_ms is None else f"{self.latency_p99_ms:.1f}"
        out = self.predictions + self.dead_letters
        return (
            f"in {self.events_in * rate:.0f}/s out {out * rate:.0f}/s "
            f"mean batch {mean_batch:.1f} latency p50 {p50} ms p99 {p99} ms "
            f"dlq {self.dead_letters} (total {self.totals.get('dead_letters', 0)}) "
            f"partitions {self.partitions} "
            f"total in {self.totals.get('events_in', 0)} out {self.totals.get('out', 0)}"
        )


class Stats:
    """Counters for the current interval plus running totals."""

    def __init__(self, *, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._latencies = array("d")
        self._stride = 1
        self.events_in = self.predictions = self.dead_letters = self.batches = self.batch_rows = 0
        self._totals = {"events_in": 0, "out": 0, "dead_letters": 0}

    @property
    def latency_samples(self) -> int:
        """How many latencies of this interval are kept (bounded, whatever its length)."""
        return len(self._latencies)

    def batch(self, rows: int) -> None:
        self.batches += 1
        self.batch_rows += rows

    def prediction(self, latency_ms: float) -> None:
        self.predictions += 1
        if self.predictions % self._stride:
            return
        self._latencies.append(latency_ms)
        if len(self._latencies) >= 2 * _MAX_SAMPLES:  # keep every other one from now on
            self._latencies = self._latencies[::2]
            self._stride *= 2

    def due(self) -> bool:
        return self._clock() - self._started >= self._interval_s

    def snapshot(self, partitions: int) -> StatsSnapshot:
        """Close the interval and return its figures."""
        now = self._clock()
        p50 = p99 = None
        if self._latencies:
            latencies = np.frombuffer(self._latencies, dtype=np.float64)
            p50, p99 = (float(x) for x in np.percentile(latencies, [50, 99]))
        self._totals["events_in"] += self.events_in
        self._totals["out"] += self.predictions + self.dead_letters
        self._totals["dead_letters"] += self.dead_letters
        snap = StatsSnapshot(
            seconds=now - self._started,
            events_in=self.events_in,
            predictions=self.predictions,
            dead_letters=self.dead_letters,
            batches=self.batches,
            batch_rows=self.batch_rows,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            partitions=partitions,
            totals=dict(self._totals),
        )
        self._started = now
        self._latencies = array("d")
        self._stride = 1
        self.events_in = self.predictions = self.dead_letters = self.batches = self.batch_rows = 0
        return snap

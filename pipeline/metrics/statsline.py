"""The stats line: one reader of the sensor events, logged by the worker every few seconds.

Counts events in and out, inference executions and their rows, dead letters, and the
event-to-prediction latency (from the event's time to the broker's acknowledgement of its
prediction) over each interval, plus running totals. Latencies are thinned as an interval
grows (every other one is kept once 10,000 are held), so a long interval costs bounded
memory and a bounded pause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.metrics.sensor import Sensor

__all__ = ["StatsLine", "StatsSnapshot"]

_MAX_SAMPLES = 5_000  # thinned to every other one once twice this many are held


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
    requests: int = 0
    expired: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    kind: str = "consumer"

    def line(self) -> str:
        """The human-readable stats line: Kafka's figures for a worker (without partitions
        for a share-group member, which holds none of its own), the doors' for a server."""
        rate = 1.0 / self.seconds if self.seconds > 0 else 0.0
        mean_batch = self.batch_rows / self.batches if self.batches else 0.0
        if self.kind == "doors":
            return (
                f"requests {self.requests * rate:.0f}/s predictions {self.answered * rate:.0f}/s "
                f"mean batch {mean_batch:.1f} total requests {self.totals.get('requests', 0)} "
                f"predictions {self.totals.get('answered', 0)}"
                + (f" expired {self.expired}" if self.expired else "")
            )
        p50 = "-" if self.latency_p50_ms is None else f"{self.latency_p50_ms:.1f}"
        p99 = "-" if self.latency_p99_ms is None else f"{self.latency_p99_ms:.1f}"
        out = self.predictions + self.dead_letters
        return (
            f"in {self.events_in * rate:.0f}/s out {out * rate:.0f}/s "
            f"mean batch {mean_batch:.1f} latency p50 {p50} ms p99 {p99} ms "
            f"dlq {self.dead_letters} (total {self.totals.get('dead_letters', 0)}) "
            + ("" if self.kind == "share" else f"partitions {self.partitions} ")
            + f"total in {self.totals.get('events_in', 0)} out {self.totals.get('out', 0)}"
            + (f" requests {self.requests * rate:.0f}/s" if self.requests else "")
            + (f" expired {self.expired}" if self.expired else "")
            + "".join(f" {kind} {n}" for kind, n in sorted(self.acknowledged.items()))
        )


class StatsLine(Sensor):
    """Counters for the current interval plus running totals, fed by sensor events.

    Args:
        interval_s: How often a line is due.
        kind: Whose line: ``consumer`` (a consumer-group worker), ``share`` (a share-group
            member: no partitions of its own) or ``doors`` (`pipeline serve`: requests and
            predictions, no Kafka figures).
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        interval_s: float,
        kind: str = "consumer",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._kind = kind
        self._clock = clock
        self._started = clock()
        self._totals = {"events_in": 0, "out": 0, "dead_letters": 0, "requests": 0, "answered": 0}
        self._partitions = 0
        self._reset()

    def _reset(self) -> None:
        self.events_in = self.predicted = self.dead = self.batches = self.batch_rows = 0
        self.requests = self.expired = self.door_predictions = 0
        self.acknowledged: dict[str, int] = {}
        self._samples: list[np.ndarray] = []
        self._held = 0
        self._stride = 1

    @property
    def latency_samples(self) -> int:
        """How many latencies of this interval are held (bounded, whatever its length)."""
        return self._held

    # -- sensor events ----------------------------------------------------------------------

    def records_consumed(self, topic: str, n: int) -> None:
        self.events_in += n

    def inference(
        self, model: str, version: str, rows: int, queue_wait_s: float, infer_s: float
    ) -> None:
        self.batches += 1
        self.batch_rows += rows

    def predictions(self, model: str, version: str, latencies_s: np.ndarray) -> None:
        start = (-self.predicted) % self._stride  # every stride-th prediction of the interval
        self.predicted += len(latencies_s)
        kept = latencies_s[start :: self._stride]
        self._samples.append(kept * 1000.0)
        self._held += len(kept)
        if self._held >= 2 * _MAX_SAMPLES:
            thinned = np.concatenate(self._samples)[::2]
            self._samples, self._held = [thinned], len(thinned)
            self._stride *= 2

    def dead_letters(self, stage: str, error_type: str, n: int) -> None:
        self.dead += n

    def rows_expired(self, model: str, version: str, rows: int) -> None:
        self.expired += rows

    def request(self, door: str, status: str, seconds: float) -> None:
        self.requests += 1

    def answered(self, model: str, version: str, rows: int) -> None:
        self.door_predictions += rows

    def records_acknowledged(self, kind: str, n: int) -> None:
        self.acknowledged[kind] = self.acknowledged.get(kind, 0) + n

    def partitions(self, assigned: int, paused: int) -> None:
        self._partitions = assigned

    # -- the line ---------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether an interval has passed since the last snapshot."""
        return self._clock() - self._started >= self._interval_s

    def snapshot(self) -> StatsSnapshot:
        """Close the interval and return its figures."""
        now = self._clock()
        p50 = p99 = None
        if self._held:
            p50, p99 = (float(x) for x in np.percentile(np.concatenate(self._samples), [50, 99]))
        self._totals["events_in"] += self.events_in
        self._totals["out"] += self.predicted + self.dead
        self._totals["dead_letters"] += self.dead
        self._totals["requests"] += self.requests
        self._totals["answered"] += self.door_predictions
        snap = StatsSnapshot(
            seconds=now - self._started,
            events_in=self.events_in,
            predictions=self.predicted,
            dead_letters=self.dead,
            batches=self.batches,
            batch_rows=self.batch_rows,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            partitions=self._partitions,
            totals=dict(self._totals),
            requests=self.requests,
            expired=self.expired,
            acknowledged=dict(self.acknowledged),
            answered=self.door_predictions,
            kind=self._kind,
        )
        self._started = now
        self._reset()
        return snap

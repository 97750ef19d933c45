"""`--latency-target-ms`: batch sizes from a latency target instead of a fixed wait.

A fixed ``--max-wait-ms`` makes every row at light load wait for company it does not
need, and ignores what a batch costs at heavy load. `LatencyTarget` instead keeps, per
model version,

- the cost of a batch as a function of its rows, ``cost(b) = a + c * b``: a weighted
  least-squares line through the recent batches (older ones weigh less);
- the rate at which rows arrive (decayed over about a second).

From those it gives the engine's batcher, per key:

- a *wait*: rows are cut as soon as there are enough of them for inference to keep up
  with the arrivals using at most half of the worker's time (``rate * (a / b + c) <=
  0.5``), so at light load a single row leaves at once and at heavy load rows wait for
  a batch that amortizes the fixed cost. The oldest row never waits longer than the
  budget less the batch's cost, the budget being half the target (the other half is
  for decoding, producing, the broker's acknowledgement and the unexpected);
- a *cap*: the largest batch whose cost fits in half the budget (at most
  ``--max-batch-size``), so a full batch never by itself breaks the target.

Before a key has run two batch sizes its cost is unknown and its rows are cut at once.
Overload: nothing is dropped; the Kafka worker pauses partitions past ``--max-in-flight``,
the doors answer 429 past ``--max-queue``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["LatencyTarget"]

_DECAY = 0.98  # each batch's weight in the cost fit, relative to the one after it
_SHARE = 0.5  # of the target, for the engine's own wait and inference
_BUSY = 0.5  # of the worker's time, at most, for inference: wait for bigger batches beyond
_RATE_WINDOW_S = 1.0  # time constant of the arrival rate


@dataclass(slots=True)
class _Fit:
    """Decayed sums for a weighted least-squares line through (rows, seconds)."""

    w: float = 0.0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0

    def add(self, rows: int, seconds: float) -> None:
        self.w = self.w * _DECAY + 1
        self.x = self.x * _DECAY + rows
        self.y = self.y * _DECAY + seconds
        self.xx = self.xx * _DECAY + rows * rows
        self.xy = self.xy * _DECAY + rows * seconds

    def line(self) -> tuple[float, float]:
        """(fixed cost, cost per row) in seconds; both at least 0."""
        if self.w <= 0:
            return 0.0, 0.0
        spread = self.w * self.xx - self.x * self.x
        if spread <= 1e-12:  # one batch size seen so far: all of it per row
            return 0.0, self.y / max(self.x, 1e-9)
        per_row = max((self.w * self.xy - self.x * self.y) / spread, 0.0)
        fixed = max((self.y - per_row * self.x) / self.w, 0.0)
        return fixed, per_row


@dataclass(slots=True)
class _Rate:
    """Rows per second, decayed exponentially with `_RATE_WINDOW_S`."""

    rows: float = 0.0
    at: float | None = None

    def add(self, rows: int, now: float) -> None:
        self.rows = self._decayed(now) + rows
        self.at = now

    def per_s(self, now: float | None = None) -> float:
        return self._decayed(now if now is not None else self.at) / _RATE_WINDOW_S

    def _decayed(self, now: float | None) -> float:
        if self.at is None or now is None:
            return self.rows
        return self.rows * math.exp(-max(now - self.at, 0.0) / _RATE_WINDOW_S)


class LatencyTarget:
    """A `pipeline.engine.batching.BatchSizing` from a latency target (see the module).

    Args:
        target_ms: The time an event may take from its arrival to its output.
        max_batch_size: Batches never exceed it.
    """

    def __init__(self, target_ms: float, *, max_batch_size: int) -> None:
        self.budget_s = target_ms / 1000 * _SHARE
        self._max = max_batch_size
        self._fits: dict[Hashable, _Fit] = {}
        self._rates: dict[Hashable, _Rate] = {}
        self._lock = threading.Lock()

    def observe(self, key: Hashable, rows: int, seconds: float) -> None:
        """A batch of `rows` rows of `key` ran in `seconds`."""
        with self._lock:
            self._fits.setdefault(key, _Fit()).add(rows, seconds)

    def added(self, key: Hashable, rows: int, now: float) -> None:
        with self._lock:
            self._rates.setdefault(key, _Rate()).add(rows, now)

    def cost_s(self, key: Hashable, rows: int) -> float:
        """The expected cost of a batch of `rows` rows of `key` (0 before any was seen)."""
        fixed, per_row = self._line(key)
        return fixed + per_row * rows

    def cap(self, key: Hashable) -> int:
        fixed, per_row = self._line(key)
        if per_row <= 0:
            return self._max
        # the 1e-9 keeps a fit of exactly 30 rows from rounding down to 29
        fits = int((self.budget_s / 2 - fixed) / per_row + 1e-9)
        return max(1, min(fits, self._max))

    def wait_s(self, key: Hashable, pending: int) -> float:
        fixed, per_row = self._line(key)
        with self._lock:
            rate = self._rates[key].per_s() if key in self._rates else 0.0
        longest = max(0.0, self.budget_s - (fixed + per_row * pending))
        if fixed <= 0 or rate <= 0:
            return 0.0  # nothing to amortize, or nothing to wait for
        spare = _BUSY / rate - per_row  # per row, for the fixed cost, keeping up at _BUSY
        if spare <= 0:
            return longest  # no batch size keeps up: fill batches (the cap cuts them)
        needed = fixed / spare
        if pending >= needed:
            return 0.0
        return min(longest, (needed - pending) / rate)

    def _line(self, key: Hashable) -> tuple[float, float]:
        with self._lock:
            fit = self._fits.get(key)
            return fit.line() if fit is not None else (0.0, 0.0)

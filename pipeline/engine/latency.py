"""`--latency-target-ms`: batch sizes from a latency target instead of a fixed wait.

A fixed ``--max-wait-ms`` makes every row at light load wait for company it will not get,
and caps heavy load at the same wait whatever a batch costs. `LatencyTarget` instead fits,
per model version, what a batch costs as a function of its rows (``cost(b) = a + c * b``,
least squares over the recent batches, older ones weighing less) and gives the engine's
batcher, per key:

- a *wait*: the oldest pending row may wait ``budget - cost(pending)``, where the budget is
  half the target (the other half is for decoding, producing, the broker's acknowledgement
  and the unexpected): a model that is cheap to run leaves room to wait for company, one
  that is dear does not;
- a *cap*: the largest batch whose cost fits in half the budget (at most
  ``--max-batch-size``), so a full batch never by itself breaks the target.

Light load: few rows arrive within the wait, so batches are small and leave at once when
the model is dear. Heavy load: rows pile up faster than the wait, so batches fill to the
cap. Overload: nothing is dropped; the Kafka worker pauses partitions past
``--max-in-flight``, the doors answer 429 past ``--max-queue``.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["LatencyTarget"]

_DECAY = 0.98  # each batch's weight in the fit, relative to the one after it
_SHARE = 0.5  # of the target, for the engine's own wait and inference


@dataclass(slots=True)
class _Fit:
    """Decayed sums for a weighted least-squares line through (rows, seconds)."""

    w: float = 0.0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0

    def add(self, rows: int, seconds: float) -> None:
        for name in ("w", "x", "y", "xx", "xy"):
            setattr(self, name, getattr(self, name) * _DECAY)
        self.w += 1
        self.x += rows
        self.y += seconds
        self.xx += rows * rows
        self.xy += rows * seconds

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
        self._lock = threading.Lock()

    def observe(self, key: Hashable, rows: int, seconds: float) -> None:
        """A batch of `rows` rows of `key` ran in `seconds`."""
        with self._lock:
            self._fits.setdefault(key, _Fit()).add(rows, seconds)

    def cost_s(self, key: Hashable, rows: int) -> float:
        """The expected cost of a batch of `rows` rows of `key` (0 before any was seen)."""
        with self._lock:
            fit = self._fits.get(key)
            fixed, per_row = fit.line() if fit is not None else (0.0, 0.0)
        return fixed + per_row * rows

    def cap(self, key: Hashable) -> int:
        with self._lock:
            fit = self._fits.get(key)
            fixed, per_row = fit.line() if fit is not None else (0.0, 0.0)
        if per_row <= 0:
            return self._max
        # the 1e-9 keeps a fit of exactly 30 rows from rounding down to 29
        fits = int((self.budget_s / 2 - fixed) / per_row + 1e-9)
        return max(1, min(fits, self._max))

    def wait_s(self, key: Hashable, pending: int) -> float:
        return max(0.0, self.budget_s - self.cost_s(key, pending))

"""Liveness and readiness of a process, as the probes and the protocol endpoints report them.

*Live* means the process's loops are turning (a `heartbeat` came recently) and no
watched work is stuck (a `Stall`: outputs owed with no delivery for a bound); it never
fails merely because Kafka is slow or down. *Ready* means every part that holds readiness back
has let go (the models are loaded and warmed; a worker's partitions are assigned) and
nothing fatal happened; the reason is reported when it is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Readiness", "Stall"]

log = logging.getLogger("pipeline.health")


class Readiness:
    """What `/healthz`, `/readyz` and the protocol's health endpoints answer.

    Args:
        stale_after_s: Not live once no heartbeat came for this long (0: always live).
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self, *, stale_after_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, str] = {}
        self._fatal: str | None = None
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._beat = clock()
        self._stalls: list[Stall] = []

    def watch(self, stall: Stall) -> None:
        """Not live while `stall` reports its work stuck."""
        self._stalls.append(stall)

    def wait_for(self, part: str, reason: str) -> None:
        """Hold readiness back until `done(part)`; `reason` says what is awaited."""
        with self._lock:
            self._waiting[part] = reason

    def done(self, part: str) -> None:
        """`part` no longer holds readiness back."""
        with self._lock:
            self._waiting.pop(part, None)

    def fatal(self, reason: str) -> None:
        """Something the process cannot recover from happened: never ready again."""
        with self._lock:
            self._fatal = reason

    def heartbeat(self) -> None:
        """A loop turned."""
        self._beat = self._clock()

    def live(self) -> tuple[bool, str]:
        """Whether the process is live, and why not."""
        if self._stale_after_s and self._clock() - self._beat > self._stale_after_s:
            return False, f"no loop turn for {self._clock() - self._beat:.1f} s"
        for stall in self._stalls:
            stuck = stall.stuck()
            if stuck is not None:
                return False, stuck
        return True, "live"

    def ready(self) -> tuple[bool, str]:
        """Whether the process is ready, and why not."""
        with self._lock:
            if self._fatal is not None:
                return False, f"stopped: {self._fatal}"
            if self._waiting:
                return False, "; ".join(self._waiting.values())
        return True, "ready"


class Stall:
    """Work owed that makes no progress for `after_s` (0: never) is stuck.

    The owner calls `observe` as its loop turns; `stuck` (from any thread) says why the
    work is stuck, or None. A loop that turns while its outputs wait forever (a producer
    that lost its leader and never finds it again) is live by its heartbeat alone: this is
    what lets a liveness probe see it.

    Args:
        what: Names the work in the reason (e.g. "outputs").
        after_s: Stuck once owed with no progress this long; 0 turns the check off.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self, what: str, *, after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._after_s = after_s
        self._clock = clock
        self._owed = 0
        self._since = clock()  # when the work last moved (or was last all done)
        self._warned = False

    def observe(self, owed: int, *, progressed: bool) -> None:
        """`owed` items wait; `progressed` if any finished since the last call."""
        if not owed or progressed:
            self._since = self._clock()
            self._warned = False
        self._owed = owed
        stuck = None if self._warned else self.stuck()
        if stuck is not None:  # once per stall: the probe's answer says it from then on
            log.warning("%s", stuck)
            self._warned = True

    def stuck(self) -> str | None:
        """Why the work is stuck, or None."""
        waited = self._clock() - self._since
        if not self._after_s or not self._owed or waited <= self._after_s:
            return None
        return (
            f"{self._owed} {self._what} owed with no delivery for {waited:.0f} s "
            f"(bound {self._after_s:g} s): the producer is stuck; restart the worker"
        )

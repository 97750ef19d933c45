"""Liveness and readiness of a process, as the probes and the protocol endpoints report them.

*Live* means the process's loops are turning (a `heartbeat` came recently): it never
fails because Kafka is slow or down. *Ready* means every part that holds readiness back
has let go (the models are loaded and warmed; a worker's partitions are assigned) and
nothing fatal happened; the reason is reported when it is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Readiness"]


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
        return True, "live"

    def ready(self) -> tuple[bool, str]:
        """Whether the process is ready, and why not."""
        with self._lock:
            if self._fatal is not None:
                return False, f"stopped: {self._fatal}"
            if self._waiting:
                return False, "; ".join(self._waiting.values())
        return True, "ready"

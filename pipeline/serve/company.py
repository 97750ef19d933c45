"""How many callers the doors have lately had at once: what the engine's loop waits for
under ``--dispatch when-idle`` (`Company`)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Company"]


class Company:
    """How many of the doors' requests have lately waited for the engine at once, and so
    how many rows the engine's loop should wait for before it runs what waits (its
    `EngineLoop` ``gather``).

    Under ``--dispatch when-idle`` the loop runs rows as soon as it is free. A caller that
    has been answered and is about to send its next request is not counted anywhere, so
    when gRPC hands requests to the loop one at a time the engine ran 3 rows at a time at
    64 callers, paying a batch's fixed cost (and a wake-up of the doors' loop) per 3
    answers. Those callers show in how many requests are in flight: the mean that the
    requests of the last `window_s` found in flight (themselves included) is taken as the
    callers there are, and the loop waits for half of them, never longer than
    ``--max-wait-ms`` for the oldest row. A lone caller makes 1 (its rows run at once);
    after `window_s` without requests the count starts again from 1. The mean, not the
    peak: waiting keeps requests in flight longer, and at a fixed arrival rate the mean
    settles where the wait is about one batch's time, while a peak kept growing to the
    full ``--max-wait-ms``.

    `saw` is called on the doors' loop, `rows_to_gather` on the engine's thread: each
    reads or writes plain numbers, which the GIL keeps whole, and a figure a turn late
    only changes one batch's size.
    """

    def __init__(self, window_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._sum = self._count = 0  # in flight, over this window's requests
        self._mean = 0.0  # over the window before
        self._window_ends = -window_s

    def saw(self, in_flight: int, now: float) -> None:
        """A request is submitted with `in_flight` requests (itself included) in flight."""
        if now >= self._window_ends:
            fresh = now < self._window_ends + self._window_s  # the window just ended
            self._mean = self._sum / self._count if fresh and self._count else 0.0
            self._sum = self._count = 0
            self._window_ends = now + self._window_s
        self._sum += in_flight
        self._count += 1

    def rows_to_gather(self) -> int:
        """Rows worth waiting for: half the callers there seem to be, at least 1; 1 once
        no request came for a window."""
        if self._clock() >= self._window_ends + self._window_s:
            return 1
        # the window before, or (the first window after a quiet one) this one so far
        mean = self._mean or (self._sum / self._count if self._count else 0.0)
        return max(1, int(mean / 2))

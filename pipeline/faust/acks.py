"""Acknowledging events in the order they arrived, each only once its output is delivered.

Faust commits, per partition, the first run of consecutive acknowledged offsets, and its
check that the run starts at the committed position is off by one (and absent before a
partition's first commit): acknowledging offset 11 while 10 is still in flight can commit
past 10. The agent's outputs are delivered out of order (one model's batch before
another's, a dead letter before a prediction), so `InOrderAcks` holds each event back
until every event that arrived before it on its partition is delivered too, and only
then hands it out to be acknowledged. Nothing here knows Faust: a partition is any
hashable name, an event any object.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["InOrderAcks", "Pending"]

E = TypeVar("E")


class Pending(Generic[E]):
    """One event between its arrival and its acknowledgement."""

    __slots__ = ("delivered", "event", "partition")

    def __init__(self, partition: Hashable, event: E) -> None:
        self.partition = partition
        self.event = event
        self.delivered = False


class InOrderAcks(Generic[E]):
    """Releases events for acknowledgement per partition, in arrival order.

    `arrived` registers an event; `delivered` marks one as done and returns the events
    now free to be acknowledged: the run of delivered events at the head of its
    partition's queue. An event that is never delivered (its output failed) holds back
    every later event of its partition, so no commit passes it.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Pending[E]]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Events arrived and not yet released."""
        return self._count

    def arrived(self, partition: Hashable, event: E) -> Pending[E]:
        """Register `event`, the newest of `partition`; return its place in line."""
        pending = Pending(partition, event)
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = deque()
        queue.append(pending)
        self._count += 1
        return pending

    def delivered(self, pending: Pending[E]) -> list[E]:
        """Mark `pending`'s output delivered; return the events that may now be acked.

        Raises:
            ValueError: `pending` was delivered before, or not registered here.
        """
        if pending.delivered:
            raise ValueError(f"an event of partition {pending.partition!r} was delivered twice")
        queue = self._queues.get(pending.partition)
        if not queue:
            raise ValueError(f"no event of partition {pending.partition!r} is waiting")
        pending.delivered = True
        released: list[E] = []
        while queue and queue[0].delivered:
            released.append(queue.popleft().event)
        if not queue:
            del self._queues[pending.partition]
        self._count -= len(released)
        return released

"""Which input offsets may be committed: the highest contiguous finished offset per partition.

An input record is *finished* once the output it paid for (a prediction or a dead-letter
record) has been acknowledged by the broker. Records of one partition finish out of order
(different models, different batches), so the committable position of a partition is the
lowest offset still in flight, or one past the last consumed offset when nothing is.
Nothing here knows about Kafka clients; partitions are plain ``(topic, partition)`` pairs.

Each assignment of a partition is a new *generation*. `consumed` returns it and
`finished` takes it back, so an acknowledgement that arrives late for an assignment that
was lost (its record since re-consumed under a new one) can never move a commit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["OffsetTracker", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


class _Partition:
    __slots__ = ("committed", "done", "first", "generation", "members", "next_offset", "pending")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pending: deque[int] = deque()  # consumed, not yet finished, ascending
        self.members: set[int] = set()  # the offsets in `pending`, for membership tests
        self.done: set[int] = set()  # finished offsets still behind an unfinished one
        self.next_offset: int | None = None  # one past the last consumed offset
        self.first: int | None = None  # the first offset consumed in this assignment
        self.committed: int | None = None  # last position handed out by `commit_positions`


class OffsetTracker:
    """Tracks consumed and finished offsets, per partition, for safe commits."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartitionKey, _Partition] = {}
        self._generations: dict[TopicPartitionKey, int] = {}
        self._in_flight = 0

    def __len__(self) -> int:
        """Events consumed and not yet finished, over all partitions."""
        return self._in_flight

    def partitions(self) -> list[TopicPartitionKey]:
        """The partitions being tracked."""
        return list(self._parts)

    def in_flight(self, tp: TopicPartitionKey) -> int:
        """Events of `tp` consumed and not yet finished."""
        part = self._parts.get(tp)
        return len(part.pending) - len(part.done) if part else 0

    def consumed(self, tp: TopicPartitionKey, offset: int) -> int:
        """Record that `offset` of `tp` was read and its output is now owed.

        Returns:
            The generation of this assignment of `tp`, to hand back to `finished`.
        """
        part = self._parts.get(tp)
        if part is None:
            generation = self._generations.get(tp, 0) + 1
            self._generations[tp] = generation
            part = self._parts[tp] = _Partition(generation)
        if offset in part.members:  # the same record again (a rewind): still owed once
            return part.generation
        part.pending.append(offset)
        part.members.add(offset)
        part.next_offset = offset + 1
        if part.first is None:
            part.first = offset
        self._in_flight += 1
        return part.generation

    def finished(self, tp: TopicPartitionKey, offset: int, generation: int | None = None) -> None:
        """Record that the output for `offset` of `tp` was acknowledged.

        Ignored unless `offset` is in flight in the current assignment (`generation`, when
        given, must be the one `consumed` returned): work of revoked or lost partitions was
        dropped, and an output that arrives late for it cannot move a commit.
        """
        part = self._parts.get(tp)
        if part is None or offset not in part.members or offset in part.done:
            return
        if generation is not None and generation != part.generation:
            return
        self._in_flight -= 1
        if offset != part.pending[0]:
            part.done.add(offset)
            return
        part.members.discard(part.pending.popleft())
        while part.pending and part.pending[0] in part.done:
            head = part.pending.popleft()
            part.done.discard(head)
            part.members.discard(head)

    def position(self, tp: TopicPartitionKey) -> int | None:
        """The offset to commit for `tp` (the next record to read after a restart), or None."""
        part = self._parts.get(tp)
        if part is None:
            return None
        return part.pending[0] if part.pending else part.next_offset

    def generation(self, tp: TopicPartitionKey) -> int | None:
        """The generation of the current assignment of `tp`, or None if it is not tracked."""
        part = self._parts.get(tp)
        return part.generation if part is not None else None

    def first_offset(self, tp: TopicPartitionKey) -> int | None:
        """The first offset consumed in this assignment of `tp`, or None: where to rewind
        when the group has no committed offset for it yet."""
        part = self._parts.get(tp)
        return part.first if part is not None else None

    def commit_positions(
        self, only: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved since the last call (of the given partitions, or all)."""
        moved: dict[TopicPartitionKey, int] = {}
        for tp in self._parts if only is None else only:
            position = self.position(tp)
            part = self._parts.get(tp)
            if part is not None and position is not None and position != part.committed:
                moved[tp] = position
        return moved

    def mark_committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        """Remember positions the broker accepted, so they are not sent again."""
        for tp, position in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = position

    def forget(self, tps: Iterable[TopicPartitionKey]) -> int:
        """Stop tracking `tps` (revoked or lost); return how many unfinished events were dropped."""
        dropped = 0
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                dropped += len(part.pending) - len(part.done)
        self._in_flight -= dropped
        return dropped

"""Which input offsets may be committed: the highest contiguous finished offset per partition.

An input record is *finished* once the output it paid for (a prediction or a dead-letter
record) has been acknowledged by the broker. Records of one partition finish out of order
(different models, different batches), so the committable position of a partition is the
lowest offset still in flight, or one past the last consumed offset when nothing is.
Nothing here knows about Kafka clients; partitions are plain ``(topic, partition)`` pairs.

Each assignment of a partition is a new *generation*. `consumed` returns it and
`finished` takes it back, so an acknowledgement that arrives late for an assignment that
was lost (its record since re-consumed under a new one) can never move a commit.

The worker reports whole runs of offsets (`consumed_many`, `finished_many`: the records of
one partition in one consume, the inputs of one batch's outputs), so the bookkeeping is a
few array operations per run, not Python work per record: each partition keeps its
consumed offsets in one growing array, in order, with a parallel array of finished flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["OffsetTracker", "Owed", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]
Owed = tuple[TopicPartitionKey, int]
"""The partition some inputs were read from, and the generation of its assignment."""
_INITIAL = 1024


class _Partition:
    """One assignment of one partition: offsets consumed in order, and which are finished."""

    __slots__ = ("committed", "done", "first", "generation", "head", "next_offset", "offsets",
                 "owed", "size")  # fmt: skip

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.offsets = np.empty(_INITIAL, dtype=np.int64)  # consumed, ascending
        self.done = np.zeros(_INITIAL, dtype=bool)
        self.head = 0  # index of the lowest offset not finished (== size: none)
        self.size = 0
        self.owed = 0  # consumed and not finished
        self.next_offset: int | None = None  # one past the last consumed offset
        self.first: int | None = None  # the first offset consumed in this assignment
        self.committed: int | None = None  # last position handed out by `commit_positions`

    def append(self, offsets: np.ndarray) -> None:
        """Add offsets consumed after every offset held (ascending)."""
        n = len(offsets)
        if self.head and self.head >= self.size // 2:  # drop the finished prefix
            keep = slice(self.head, self.size)
            self.size -= self.head
            self.offsets[: self.size] = self.offsets[keep]
            self.done[: self.size] = self.done[keep]
            self.head = 0
        if self.size + n > len(self.offsets):
            capacity = max(2 * len(self.offsets), self.size + n)
            self.offsets = np.resize(self.offsets, capacity)
            self.done = np.concatenate(
                [self.done[: self.size], np.zeros(capacity - self.size, bool)]
            )
        self.offsets[self.size : self.size + n] = offsets
        self.done[self.size : self.size + n] = False
        self.size += n
        self.owed += n
        self.next_offset = int(offsets[-1]) + 1
        if self.first is None:
            self.first = int(offsets[0])

    def finish(self, offsets: np.ndarray) -> int:
        """Mark `offsets` finished (those consumed and not yet finished); return how many."""
        held = self.offsets[self.head : self.size]
        at = np.searchsorted(held, offsets)
        inside = at < len(held)
        at, offsets = at[inside], offsets[inside]
        at = at[held[at] == offsets] + self.head
        at = at[~self.done[at]]
        if not len(at):
            return 0
        at = np.unique(at)
        self.done[at] = True
        self.owed -= len(at)
        if self.done[self.head]:
            rest = self.done[self.head : self.size]
            self.head += int(np.argmin(rest)) if not rest.all() else len(rest)
        return len(at)

    def position(self) -> int | None:
        return int(self.offsets[self.head]) if self.head < self.size else self.next_offset


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
        return part.owed if part else 0

    def consumed(self, tp: TopicPartitionKey, offset: int) -> int:
        """Record that `offset` of `tp` was read and its output is now owed; see
        `consumed_many`."""
        return self.consumed_many(tp, (offset,))

    def consumed_many(self, tp: TopicPartitionKey, offsets: Sequence[int]) -> int:
        """Record that `offsets` of `tp` (ascending, as consumed) were read and their outputs
        are now owed. An offset at or below one consumed before in this assignment is the
        same record again (a rewind): still owed once.

        Returns:
            The generation of this assignment of `tp`, to hand back to `finished_many`.
        """
        part = self._parts.get(tp)
        if part is None:
            generation = self._generations.get(tp, 0) + 1
            self._generations[tp] = generation
            part = self._parts[tp] = _Partition(generation)
        new = np.asarray(offsets, dtype=np.int64)
        if part.next_offset is not None:
            new = new[new >= part.next_offset]
        if len(new):
            part.append(new)
            self._in_flight += len(new)
        return part.generation

    def finished(self, tp: TopicPartitionKey, offset: int, generation: int | None = None) -> None:
        """Record that the output for `offset` of `tp` was acknowledged; see `finished_many`."""
        self.finished_many(tp, (offset,), generation)

    def finished_many(
        self, tp: TopicPartitionKey, offsets: Sequence[int], generation: int | None = None
    ) -> None:
        """Record that the outputs for `offsets` of `tp` were acknowledged.

        Offsets not in flight in the current assignment are ignored (`generation`, when
        given, must be the one `consumed_many` returned): work of revoked or lost partitions
        was dropped, and an output that arrives late for it cannot move a commit.
        """
        part = self._parts.get(tp)
        if part is None or (generation is not None and generation != part.generation):
            return
        self._in_flight -= part.finish(np.asarray(offsets, dtype=np.int64))

    def generation(self, tp: TopicPartitionKey) -> int | None:
        """The generation of the current assignment of `tp`, or None if it is not tracked."""
        part = self._parts.get(tp)
        return part.generation if part is not None else None

    def holds(self, owed: Owed) -> bool:
        """Whether inputs read in `owed` (a partition and the generation of its assignment)
        are still this assignment's: not revoked, lost, or dropped by an abort since."""
        tp, generation = owed
        return self.generation(tp) == generation

    def first_offset(self, tp: TopicPartitionKey) -> int | None:
        """The first offset consumed in this assignment of `tp`, or None: where to rewind
        when the group has no committed offset for it yet."""
        part = self._parts.get(tp)
        return part.first if part is not None else None

    def position(self, tp: TopicPartitionKey) -> int | None:
        """The offset to commit for `tp` (the next record to read after a restart), or None."""
        part = self._parts.get(tp)
        return part.position() if part is not None else None

    def commit_positions(
        self, only: Iterable[TopicPartitionKey] | None = None, *, again: bool = False
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last marked committed (of the given
        partitions, or all); with `again`, every position, marked or not (an asynchronous
        commit marked them but its answer has not come)."""
        moved: dict[TopicPartitionKey, int] = {}
        for tp in self._parts if only is None else only:
            part = self._parts.get(tp)
            position = part.position() if part is not None else None
            if part is not None and position is not None and (again or position != part.committed):
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
                dropped += part.owed
        self._in_flight -= dropped
        return dropped

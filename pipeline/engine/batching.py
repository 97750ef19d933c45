"""Micro-batching: gather rows per key and cut batches by size or by age.

`MicroBatcher` holds pending rows for any number of keys (the engine uses
``(model, version, row shapes)``). Rows arrive in *submissions*: a feed (one array per
model input, the rows on each array's first axis) plus one opaque *ticket* that stands for
all its rows (the Kafka worker's ticket holds the records of a decoded block; a front
door's holds one request). A submission may be split across
batches, so a `Batch` names its rows as `Slice`\\ s: a ticket and a row range of its
submission, in order. A key's rows are cut into a batch when ``max_batch_size`` of them are
pending (`MicroBatcher.add`), when its oldest row has waited ``max_wait_ms``
(`MicroBatcher.due`), or on demand (`MicroBatcher.flush`).

Rows are kept as the chunks they arrived in and concatenated only when a batch is cut, so
adding is cheap and nothing is allocated per row. The batcher takes ownership of the arrays
it is given and may hand them (or row slices of them) back without copying; callers must
not write to them afterwards.

The batcher knows nothing of Kafka or models, and is not thread-safe (the engine guards
it). Time comes from an injectable monotonic clock, in seconds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from pipeline.engine.signature import Feed, feed_rows
from pipeline.errors import ConfigError

__all__ = ["Batch", "BatchSizing", "Limits", "MicroBatcher", "Slice"]

T = TypeVar("T")


class BatchSizing(Protocol):
    """Decides, per key, how many rows make a full batch and how long the oldest may wait.

    The default is fixed (``max_batch_size``, ``max_wait_ms``);
    `pipeline.engine.latency.LatencyTarget` sizes batches from a latency target instead.
    """

    def cap(self, key: Hashable) -> int:
        """Rows that make a full batch for `key`."""
        ...

    def wait_s(self, key: Hashable, pending: int) -> float:
        """How long the oldest of `pending` rows of `key` may wait before they are cut."""
        ...

    def added(self, key: Hashable, rows: int, now: float) -> None:
        """`rows` rows of `key` arrived at `now` (the batcher's clock)."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's own batch size and wait (a model version's manifest settings), replacing
    the batcher's; None keeps the batcher's."""

    max_batch_size: int | None = None
    max_wait_ms: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size is not None:
            _check_batch_size(self.max_batch_size)
        if self.max_wait_ms is not None:
            _check_wait_ms(self.max_wait_ms)


_NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Slice(Generic[T]):
    """Rows ``start:stop`` of one submission, identified by its ticket."""

    ticket: T
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(slots=True)
class Batch(Generic[T]):
    """A run of rows for one key, ready for inference.

    Attributes:
        key: The key the rows were added under, e.g. ``(model, version, shapes)``.
        feed: One C-contiguous array per input, each with ``n`` rows.
        slices: Where the rows came from, in row order; their lengths add up to ``n``.
        first_added_at: Clock time at which the oldest row was added.
    """

    key: Hashable
    feed: Feed
    slices: list[Slice[T]]
    first_added_at: float

    @property
    def rows(self) -> int:
        """How many rows the batch has."""
        return feed_rows(self.feed)


@dataclass(slots=True)
class _Chunk(Generic[T]):
    """The rows of one submission not yet cut into a batch: ``feed`` holds rows
    ``start:`` of it."""

    feed: Feed
    rows: int
    ticket: T
    start: int
    added_at: float


@dataclass(slots=True)
class _Pending(Generic[T]):
    """The rows waiting for one key, oldest chunk first."""

    layout: tuple[tuple[str, str, tuple[int, ...]], ...]  # per input: name, dtype, row shape
    limits: Limits = _NO_LIMITS
    chunks: deque[_Chunk[T]] = field(default_factory=deque)
    rows: int = 0

    def take(self, n: int) -> tuple[Feed, list[Slice[T]]]:
        """Remove the oldest `n` rows; return their feed and slices."""
        parts: list[Feed] = []
        slices: list[Slice[T]] = []
        taken = 0
        while taken < n:
            chunk = self.chunks[0]
            take = min(n - taken, chunk.rows)
            if take == chunk.rows:
                self.chunks.popleft()
                parts.append(chunk.feed)
            else:
                parts.append({name: array[:take] for name, array in chunk.feed.items()})
                rest = {name: array[take:] for name, array in chunk.feed.items()}
                self.chunks[0] = _Chunk(
                    rest, chunk.rows - take, chunk.ticket, chunk.start + take, chunk.added_at
                )
            slices.append(Slice(chunk.ticket, chunk.start, chunk.start + take))
            taken += take
        self.rows -= n
        if len(parts) == 1:
            return parts[0], slices
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, slices


class MicroBatcher(Generic[T]):
    """Groups rows per key and cuts them into batches by size or age.

    Args:
        max_batch_size: Rows per full batch; `add` returns a batch as soon as a key
            has this many rows pending.
        max_wait_ms: How long the oldest pending row of a key may wait before `due`
            returns the key's rows; 0 makes every added row due at once.
        clock: Monotonic clock in seconds; injectable for tests.
        sizing: Decides full sizes and waits per key instead of the two fixed settings
            (which then only bound it: a batch never exceeds ``max_batch_size``).

    Raises:
        ConfigError: a setting is of the wrong type or out of range.
    """

    def __init__(
        self,
        *,
        max_batch_size: int = 256,
        max_wait_ms: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sizing: BatchSizing | None = None,
    ) -> None:
        self._max_batch_size = _check_batch_size(max_batch_size)
        self._max_wait_ms = _check_wait_ms(max_wait_ms)
        self._max_wait_s = self._max_wait_ms / 1000.0
        self._clock = clock
        self._sizing = sizing
        self._pending: dict[Hashable, _Pending[T]] = {}
        self._rows = 0

    @property
    def max_batch_size(self) -> int:
        """Rows per full batch."""
        return self._max_batch_size

    @property
    def max_wait_ms(self) -> float:
        """How long, in milliseconds, a key's oldest row may wait."""
        return self._max_wait_ms

    def __len__(self) -> int:
        """Return the number of pending rows over all keys."""
        return self._rows

    def pending(self, key: Hashable) -> int:
        """Return the number of rows pending for `key`."""
        pending = self._pending.get(key)
        return pending.rows if pending is not None else 0

    def add(
        self, key: Hashable, feed: Feed, ticket: T, limits: Limits = _NO_LIMITS
    ) -> list[Batch[T]]:
        """Append one submission's rows for `key`; return every batch that reached full size.

        Args:
            key: Which batch the rows belong to, e.g. ``(model, version, shapes)``.
            feed: One array per input, each with the submission's ``n`` rows on its first
                axis; the batcher keeps the arrays without copying.
            ticket: Stands for all `n` rows; batches name it in their slices.
            limits: The key's own batch size and wait, if it has any (the latest given
                for a key holds).

        Returns:
            Full batches of exactly ``max_batch_size`` rows, oldest first; rows beyond the
            last full batch stay pending.

        Raises:
            ValueError: `feed` is empty, its arrays differ in rows, or its inputs, dtypes or
                row shapes differ from the rows still pending for the same key.
        """
        rows, layout = _check_feed(feed)
        if not rows:
            return []
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(layout, limits)
        elif layout != pending.layout:
            raise ValueError(
                f"rows for key {key!r} must have the inputs, dtypes and row shapes "
                f"{pending.layout} (as the rows pending for it do), got {layout}"
            )
        pending.limits = limits
        contiguous = {name: np.ascontiguousarray(array) for name, array in feed.items()}
        chunk = _Chunk(contiguous, rows, ticket, 0, self._clock())
        if self._sizing is not None:
            self._sizing.added(key, rows, chunk.added_at)
        pending.chunks.append(chunk)
        pending.rows += rows
        self._rows += rows
        full: list[Batch[T]] = []
        cap = self._cap(key, pending)
        while pending.rows >= cap:
            full.append(self._cut(key, pending, cap))
        if not pending.rows:
            del self._pending[key]
        return full

    def due(self) -> list[Batch[T]]:
        """Cut and return the rows of every key whose oldest row has waited long enough.

        Returns:
            One batch per due key, oldest first.
        """
        now = self._clock()
        keys = [key for key, p in self._pending.items() if now >= self._deadline(key, p)]
        return self._cut_all(keys)

    def flush(self) -> list[Batch[T]]:
        """Cut and return everything pending, regardless of age.

        Returns:
            One batch per key with pending rows, oldest first.
        """
        return self._cut_all(list(self._pending))

    def next_deadline(self) -> float | None:
        """Return the clock time at which the earliest pending key becomes due.

        Returns:
            That time (possibly already past), or None if nothing is pending.
        """
        return min((self._deadline(k, p) for k, p in self._pending.items()), default=None)

    def drop(self, predicate: Callable[[T], bool]) -> int:
        """Remove the pending rows of every submission whose ticket matches `predicate`.

        A key's deadline follows its oldest remaining row.

        Args:
            predicate: Called once per pending chunk's ticket; True removes its rows.

        Returns:
            How many rows were removed.
        """
        removed = 0
        for key in list(self._pending):
            pending = self._pending[key]
            kept = deque(chunk for chunk in pending.chunks if not predicate(chunk.ticket))
            rows = sum(chunk.rows for chunk in kept)
            removed += pending.rows - rows
            self._rows -= pending.rows - rows
            pending.chunks, pending.rows = kept, rows
            if not rows:
                del self._pending[key]
        return removed

    def _cap(self, key: Hashable, pending: _Pending[T]) -> int:
        largest = pending.limits.max_batch_size or self._max_batch_size
        if self._sizing is None:
            return largest
        return max(1, min(self._sizing.cap(key), largest))

    def _deadline(self, key: Hashable, pending: _Pending[T]) -> float:
        own = pending.limits.max_wait_ms
        if self._sizing is not None:
            wait = self._sizing.wait_s(key, pending.rows)
            if own is not None:
                wait = min(wait, own / 1000.0)
        else:
            wait = self._max_wait_s if own is None else own / 1000.0
        return pending.chunks[0].added_at + wait

    def _cut_all(self, keys: list[Hashable]) -> list[Batch[T]]:
        batches: list[Batch[T]] = []
        for key in keys:
            pending = self._pending.pop(key)
            cap = self._cap(key, pending)
            while pending.rows > cap:  # a sizing may have lowered the cap meanwhile
                batches.append(self._cut(key, pending, cap))
            batches.append(self._cut(key, pending))
        batches.sort(key=lambda b: b.first_added_at)
        return batches

    def _cut(self, key: Hashable, pending: _Pending[T], size: int | None = None) -> Batch[T]:
        """Take the oldest `size` rows (all if None) of `pending` as one batch."""
        first_added_at = pending.chunks[0].added_at
        n = pending.rows if size is None else size
        feed, slices = pending.take(n)
        self._rows -= n
        return Batch(key, feed, slices, first_added_at)


def _check_feed(feed: object) -> tuple[int, tuple[tuple[str, str, tuple[int, ...]], ...]]:
    """A feed's rows and layout (per input: name, dtype, row shape), or ValueError."""
    if not isinstance(feed, dict) or not feed:
        raise ValueError(f"rows must be a feed (input name -> array), got {type(feed).__name__}")
    rows: set[int] = set()
    layout = []
    for name, array in feed.items():
        if not isinstance(array, np.ndarray) or array.ndim < 1:
            raise ValueError(f"input {name!r} must be a numpy array with a row axis, got {array!r}")
        rows.add(array.shape[0])
        layout.append((name, array.dtype.str, array.shape[1:]))
    if len(rows) != 1:
        raise ValueError(f"every input of a feed must have the same rows, got {sorted(rows)}")
    return rows.pop(), tuple(layout)


def _check_batch_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"max_batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def _check_wait_ms(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"max_wait_ms must be a number >= 0, got {value!r}")
    wait = float(value)
    if not wait >= 0:  # also rejects NaN
        raise ConfigError(f"max_wait_ms must be a number >= 0, got {value!r}")
    if not math.isfinite(wait):
        raise ConfigError(f"max_wait_ms must be a finite number >= 0, got {value!r}")
    return wait

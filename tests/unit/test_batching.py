"""Unit tests for the micro-batcher: size and age triggers, per-key state, drops, checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipeline.engine.batching import Batch, Limits, MicroBatcher
from pipeline.errors import ConfigError

WIDTH = 3
KEY_A = ("model-a", "1")
KEY_B = ("model-b", "1")


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time

    def advance_ms(self, ms: float) -> None:
        self.time += ms / 1000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_batcher(clock: FakeClock) -> Callable[..., MicroBatcher[int]]:
    def make(*, max_batch_size: int = 256, max_wait_ms: float = 5.0) -> MicroBatcher[int]:
        return MicroBatcher(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, clock=clock.now)

    return make


def rows(start: int, stop: int, width: int = WIDTH) -> tuple[dict[str, np.ndarray], int]:
    """One submission of rows whose every value is their id; its ticket is the first id."""
    features = np.repeat(np.arange(start, stop, dtype=np.float32)[:, None], width, axis=1)
    return {"x": features}, start


def items(batch: Batch[int]) -> list[int]:
    """The ids of a batch's rows, read from its slices (ticket = the submission's first id)."""
    return [s.ticket + i for s in batch.slices for i in range(s.start, s.stop)]


def assert_aligned(batch: Batch[int]) -> None:
    assert batch.feed["x"].dtype == np.float32
    assert batch.feed["x"].flags.c_contiguous
    assert batch.feed["x"].shape == (len(items(batch)), WIDTH) == (batch.rows, WIDTH)
    np.testing.assert_array_equal(batch.feed["x"][:, 0], np.asarray(items(batch), dtype=np.float32))
    np.testing.assert_array_equal(batch.feed["x"], batch.feed["x"][:, :1].repeat(WIDTH, axis=1))


def test_size_trigger_returns_full_batches_and_keeps_the_rest(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher(max_batch_size=256)

    batches = batcher.add(KEY_A, *rows(0, 600))

    assert [b.rows for b in batches] == [256, 256]
    assert [items(b)[0] for b in batches] == [0, 256]
    assert all(b.key == KEY_A for b in batches)
    for batch in batches:
        assert_aligned(batch)
    assert len(batcher) == 88
    (rest,) = batcher.flush()
    assert items(rest) == list(range(512, 600))
    assert_aligned(rest)


def test_rows_below_the_size_stay_pending(make_batcher: Callable[..., MicroBatcher[int]]) -> None:
    batcher = make_batcher(max_batch_size=4)

    assert batcher.add(KEY_A, *rows(0, 3)) == []

    assert len(batcher) == 3


def test_items_stay_aligned_across_chunk_boundaries(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher(max_batch_size=10)
    out: list[Batch[int]] = []

    for start, stop in [(0, 3), (3, 7), (7, 15), (15, 16), (16, 40), (40, 43)]:
        out.extend(batcher.add(KEY_A, *rows(start, stop)))
    out.extend(batcher.flush())

    assert [len(items(b)) for b in out] == [10, 10, 10, 10, 3]
    assert [i for b in out for i in items(b)] == list(range(43))
    for batch in out:
        assert_aligned(batch)
    assert len(batcher) == 0


def test_a_single_chunk_of_exactly_the_batch_size_is_not_copied(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher(max_batch_size=8)
    features, ticket = rows(0, 8)

    (batch,) = batcher.add(KEY_A, features, ticket)

    assert batch.feed["x"] is features["x"]


def test_not_due_before_max_wait_ms(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    batcher.add(KEY_A, *rows(0, 3))

    clock.advance_ms(4.9)

    assert batcher.due() == []
    assert len(batcher) == 3


@pytest.mark.parametrize("waited_ms", [5.0, 7.5])
def test_due_at_and_after_max_wait_ms(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock, waited_ms: float
) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    added_at = clock.now()
    batcher.add(KEY_A, *rows(0, 3))

    clock.advance_ms(waited_ms)
    (batch,) = batcher.due()

    assert batch.key == KEY_A
    assert items(batch) == [0, 1, 2]
    assert batch.first_added_at == added_at
    assert_aligned(batch)
    assert len(batcher) == 0
    assert batcher.due() == []


def test_due_exactly_at_next_deadline(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    batcher.add(KEY_A, *rows(0, 3))
    deadline = batcher.next_deadline()
    assert deadline is not None

    clock.time = deadline

    assert len(batcher.due()) == 1


def test_keys_have_separate_deadlines(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    batcher.add(KEY_A, *rows(0, 2))
    clock.advance_ms(3)
    batcher.add(KEY_B, *rows(100, 104))
    clock.advance_ms(2)

    (batch,) = batcher.due()

    assert batch.key == KEY_A
    assert items(batch) == [0, 1]
    assert len(batcher) == 4
    clock.advance_ms(3)
    (later,) = batcher.due()
    assert later.key == KEY_B
    assert items(later) == [100, 101, 102, 103]


def test_deadline_follows_the_oldest_row_left_after_a_full_cut(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_batch_size=4, max_wait_ms=5.0)
    batcher.add(KEY_A, *rows(0, 3))
    clock.advance_ms(2)
    second_at = clock.now()

    (full,) = batcher.add(KEY_A, *rows(3, 6))

    assert items(full) == [0, 1, 2, 3]
    assert batcher.next_deadline() == pytest.approx(second_at + 0.005)
    clock.advance_ms(3)
    assert batcher.due() == []


def test_next_deadline(make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    assert batcher.next_deadline() is None
    start = clock.now()

    batcher.add(KEY_A, *rows(0, 1))
    clock.advance_ms(2)
    batcher.add(KEY_B, *rows(1, 2))
    batcher.add(KEY_A, *rows(2, 3))

    assert batcher.next_deadline() == pytest.approx(start + 0.005)
    clock.advance_ms(3)
    batcher.due()
    assert batcher.next_deadline() == pytest.approx(start + 0.007)
    batcher.flush()
    assert batcher.next_deadline() is None


def test_flush_returns_everything_oldest_first(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=1000.0)
    batcher.add(KEY_B, *rows(10, 12))
    clock.advance_ms(1)
    batcher.add(KEY_A, *rows(0, 3))
    batcher.add(KEY_B, *rows(12, 13))

    batches = batcher.flush()

    assert [(b.key, items(b)) for b in batches] == [(KEY_B, [10, 11, 12]), (KEY_A, [0, 1, 2])]
    for batch in batches:
        assert_aligned(batch)
    assert len(batcher) == 0
    assert batcher.flush() == []


def test_drop_removes_the_rows_of_matching_submissions_and_keeps_the_rest_aligned(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher(max_batch_size=100)
    batcher.add(KEY_A, *rows(0, 5))
    batcher.add(KEY_A, *rows(5, 10))
    batcher.add(KEY_A, *rows(10, 12))
    batcher.add(KEY_B, *rows(20, 24))

    removed = batcher.drop(lambda ticket: ticket in (5, 20))

    assert removed == 9
    assert len(batcher) == 7
    (batch,) = batcher.flush()
    assert items(batch) == [0, 1, 2, 3, 4, 10, 11]
    assert_aligned(batch)


def test_a_submission_split_across_batches_is_named_by_its_slices(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher(max_batch_size=4)
    batcher.add(KEY_A, *rows(0, 3))
    first, second = batcher.add(KEY_A, *rows(3, 9))
    (rest,) = batcher.flush()

    assert [(s.ticket, s.start, s.stop) for s in first.slices] == [(0, 0, 3), (3, 0, 1)]
    assert [(s.ticket, s.start, s.stop) for s in second.slices] == [(3, 1, 5)]
    assert [(s.ticket, s.start, s.stop) for s in rest.slices] == [(3, 5, 6)]
    assert items(second) == [4, 5, 6, 7] and items(rest) == [8]


def test_drop_of_every_row_of_a_key_forgets_the_key(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=5.0)
    batcher.add(KEY_A, *rows(0, 3))
    clock.advance_ms(1)
    batcher.add(KEY_B, *rows(10, 12))

    assert batcher.drop(lambda item: item < 10) == 3

    assert batcher.next_deadline() == pytest.approx(clock.now() + 0.005)
    assert [b.key for b in batcher.flush()] == [KEY_B]
    assert batcher.drop(lambda item: True) == 0


def test_max_wait_zero_makes_every_add_due(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_wait_ms=0)
    batcher.add(KEY_A, *rows(0, 2))

    assert batcher.next_deadline() == clock.now()
    (batch,) = batcher.due()
    assert items(batch) == [0, 1]


def test_empty_add_changes_nothing(make_batcher: Callable[..., MicroBatcher[int]]) -> None:
    batcher = make_batcher()

    assert batcher.add(KEY_A, {"x": np.empty((0, WIDTH), dtype=np.float32)}, 0) == []

    assert len(batcher) == 0
    assert batcher.next_deadline() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": -5}, "max_batch_size must be an integer >= 1, got -5"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer >= 1, got 2.5"),
        ({"max_batch_size": True}, "max_batch_size must be an integer >= 1, got True"),
        ({"max_batch_size": "256"}, "max_batch_size must be an integer >= 1, got '256'"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number >= 0, got -1"),
        ({"max_wait_ms": "5"}, "max_wait_ms must be a number >= 0, got '5'"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms must be a number >= 0, got nan"),
        ({"max_wait_ms": float("inf")}, "max_wait_ms must be a finite number >= 0, got inf"),
    ],
)
def test_settings_are_validated(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MicroBatcher(**settings)  # type: ignore[arg-type]

    assert str(info.value) == message


def test_valid_settings_are_kept() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(max_batch_size=np.int64(32), max_wait_ms=2)  # type: ignore[arg-type]

    assert batcher.max_batch_size == 32
    assert batcher.max_wait_ms == 2.0


def test_width_change_for_a_key_is_rejected(make_batcher: Callable[..., MicroBatcher[int]]) -> None:
    batcher = make_batcher()
    batcher.add(KEY_A, *rows(0, 2))

    with pytest.raises(
        ValueError, match=r"row shapes .*\(3,\).* \(as the rows pending for it do\), got .*\(4,\)"
    ):
        batcher.add(KEY_A, *rows(2, 4, width=4))

    assert len(batcher) == 2
    assert batcher.add(KEY_B, *rows(2, 4, width=4)) == []


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"x": np.zeros(2), "y": np.zeros(3)}, r"the same rows, got \[2, 3\]"),
        ({"x": np.float32(1.0)}, "must be a numpy array with a row axis"),
        ({}, "must be a feed"),
        (np.zeros((2, WIDTH), dtype=np.float32), "must be a feed .*got ndarray"),
    ],
)
def test_bad_features_are_rejected(
    make_batcher: Callable[..., MicroBatcher[int]], features: object, message: str
) -> None:
    batcher = make_batcher()

    with pytest.raises(ValueError, match=message):
        batcher.add(KEY_A, features, 0)  # type: ignore[arg-type]

    assert len(batcher) == 0


def test_a_key_that_drained_may_come_back_with_another_width(
    make_batcher: Callable[..., MicroBatcher[int]],
) -> None:
    batcher = make_batcher()
    batcher.add("k", {"x": np.zeros((1, 3), dtype=np.float32)}, 1)
    batcher.flush()
    batcher.add("k", {"x": np.zeros((1, 5), dtype=np.float32)}, 2)  # a new version of the model
    (batch,) = batcher.flush()
    assert batch.feed["x"].shape == (1, 5)


def test_a_keys_own_limits_replace_the_batchers(
    make_batcher: Callable[..., MicroBatcher[int]], clock: FakeClock
) -> None:
    batcher = make_batcher(max_batch_size=256, max_wait_ms=5.0)
    own = Limits(max_batch_size=300, max_wait_ms=50.0)  # larger than the batcher's, both

    assert [b.rows for b in batcher.add(KEY_A, *rows(0, 600), own)] == [300, 300]
    assert [b.rows for b in batcher.add(KEY_B, *rows(0, 600))] == [256, 256]
    batcher.add(KEY_A, *rows(600, 610), own)
    clock.advance_ms(10)
    assert [b.key for b in batcher.due()] == [KEY_B]  # KEY_A's rows may wait 50 ms
    clock.advance_ms(40)
    assert [(b.key, b.rows) for b in batcher.due()] == [(KEY_A, 10)]

    small = Limits(max_batch_size=7, max_wait_ms=0.0)
    assert [b.rows for b in batcher.add(KEY_A, *rows(0, 20), small)] == [7, 7]
    assert [(b.key, b.rows) for b in batcher.due()] == [(KEY_A, 6)]  # a wait of 0: due at once


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_wait_ms": -1.0}, "max_wait_ms must be a number >= 0, got -1.0"),
    ],
)
def test_limits_are_validated(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Limits(**settings)

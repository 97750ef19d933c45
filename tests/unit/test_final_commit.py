"""The at-least-once worker's last commit, when it meets a rebalance (issue 30 item 8).

A member joining just as this one stops makes the stop's commit fail with
ILLEGAL_GENERATION (or UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS); left at that, the next
owner redoes everything since the last commit: duplicates after a clean SIGTERM. The real
race is exercised against a broker in tests/reliability/test_sigterm.py.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.kafka import committer
from pipeline.kafka.committer import AtLeastOnceCommitter
from pipeline.kafka.offsets import OffsetTracker


class _Host:
    """A worker whose consumer answers each synchronous commit with the next of `answers`
    (an error code, or None for success)."""

    def __init__(self, answers: list[int | None]) -> None:
        self.tracker = OffsetTracker()
        self.tracker.consumed_many(("in", 0), [0, 1, 2])
        self.tracker.finished_many(("in", 0), [0, 1, 2])
        self.consumer = self
        self.answers = answers
        self.commits: list[list[TopicPartition]] = []
        self.served: list[float] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[Any]:
        assert not asynchronous
        self.commits.append(offsets)
        code = self.answers.pop(0)
        if code is not None:
            raise KafkaException(KafkaError(code, "test"))
        return offsets

    def serve_group(self, timeout_s: float) -> None:
        self.served.append(timeout_s)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _close(host: _Host) -> None:
    c = AtLeastOnceCommitter(
        host,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        interval_ms=1000,
        every_events=1000,
        clock=_Clock(),
    )
    c.close(fatal=False)


def test_a_final_commit_that_meets_a_rebalance_is_tried_again_after_the_group_moves() -> None:
    host = _Host([KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, None])
    _close(host)
    assert [[(p.topic, p.partition, p.offset) for p in c] for c in host.commits] == [
        [("in", 0, 3)]
    ] * 3
    assert len(host.served) == 2
    assert host.tracker.commit_positions() == {}  # committed: nothing left to commit


def test_the_retries_are_bounded_and_other_errors_are_not_retried() -> None:
    rebalancing = _Host([KafkaError.UNKNOWN_MEMBER_ID] * 100)
    _close(rebalancing)
    assert 1 < len(rebalancing.commits) <= committer._FINAL_COMMIT_S + 1

    down = _Host([KafkaError._TRANSPORT])
    _close(down)
    assert len(down.commits) == 1 and down.served == []

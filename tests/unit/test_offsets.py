"""The offset tracker: a commit never passes a record whose output is still in flight."""

from __future__ import annotations

import random

import pytest

from pipeline.kafka.offsets import OffsetTracker, TopicPartitionKey

TP = ("features", 0)
TP1 = ("features", 1)
OTHER = ("other", 0)


def consume(tracker: OffsetTracker, tp: TopicPartitionKey, offsets: range | list[int]) -> None:
    for offset in offsets:
        tracker.consumed(tp, offset)


def finish(tracker: OffsetTracker, tp: TopicPartitionKey, offsets: range | list[int]) -> None:
    for offset in offsets:
        tracker.finished(tp, offset)


def test_unknown_partition_has_no_position() -> None:
    tracker = OffsetTracker()

    assert tracker.position(TP) is None
    assert tracker.in_flight(TP) == 0
    assert tracker.commit_positions() == {}
    assert len(tracker) == 0


def test_consumed_but_unfinished_holds_the_position_at_the_first_offset() -> None:
    tracker = OffsetTracker()

    consume(tracker, TP, range(100, 105))

    assert tracker.position(TP) == 100
    assert tracker.in_flight(TP) == 5
    assert len(tracker) == 5
    assert tracker.partitions() == [TP]


def test_in_order_finishes_advance_the_position_one_by_one() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10))

    for offset in range(10):
        tracker.finished(TP, offset)
        assert tracker.position(TP) == offset + 1
        assert len(tracker) == 9 - offset

    assert tracker.in_flight(TP) == 0


def test_out_of_order_finishes_hold_the_position_until_the_gap_fills() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10))

    finish(tracker, TP, range(5, 10))

    assert tracker.position(TP) == 0
    assert len(tracker) == 5
    assert tracker.in_flight(TP) == 5

    for offset in range(4):
        tracker.finished(TP, offset)
        assert tracker.position(TP) == offset + 1

    tracker.finished(TP, 4)  # fills the gap: 5..9 were already finished

    assert tracker.position(TP) == 10
    assert len(tracker) == 0
    assert tracker.in_flight(TP) == 0


def test_position_stops_at_the_lowest_unfinished_offset_in_the_middle() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10))

    finish(tracker, TP, [0, 1, 2, 4, 5, 9])

    assert tracker.position(TP) == 3
    tracker.finished(TP, 3)
    assert tracker.position(TP) == 6


def test_with_nothing_in_flight_the_position_is_one_past_the_last_consumed() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, [40, 41, 45])  # gaps, as in a compacted topic
    finish(tracker, TP, [45, 41, 40])

    assert tracker.position(TP) == 46
    assert len(tracker) == 0


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(5))
    consume(tracker, TP1, range(100, 105))
    consume(tracker, OTHER, range(3))

    finish(tracker, TP1, range(100, 105))
    finish(tracker, TP, [1, 2])
    tracker.finished(OTHER, 0)

    assert tracker.position(TP) == 0
    assert tracker.position(TP1) == 105
    assert tracker.position(OTHER) == 1
    assert (tracker.in_flight(TP), tracker.in_flight(TP1), tracker.in_flight(OTHER)) == (3, 0, 2)
    assert len(tracker) == 5


def test_finishing_an_unknown_partition_is_ignored() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(3))

    tracker.finished(TP1, 0)
    tracker.finished(OTHER, 1)

    assert len(tracker) == 3
    assert tracker.position(TP) == 0
    assert tracker.partitions() == [TP]


def test_finishing_an_offset_below_the_lowest_in_flight_is_ignored() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10, 13))

    tracker.finished(TP, 3)  # e.g. a late report from before a restart at 10

    assert len(tracker) == 3
    assert tracker.in_flight(TP) == 3
    assert tracker.position(TP) == 10


@pytest.mark.parametrize(
    "finishes",
    [
        [0, 0],  # the head twice
        [2, 2, 2],  # an offset behind the head, three times
        [0, 1, 0, 1],  # already popped offsets again
        [0, 1, 2, 3, 2, 0],  # everything, then repeats with nothing in flight
    ],
)
def test_duplicate_finishes_are_ignored(finishes: list[int]) -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(4))

    finish(tracker, TP, finishes)

    distinct = set(finishes)
    unfinished = [o for o in range(4) if o not in distinct]
    assert len(tracker) == len(unfinished)
    assert tracker.in_flight(TP) == len(unfinished)
    assert tracker.position(TP) == (unfinished[0] if unfinished else 4)


def test_finishing_an_offset_that_was_never_consumed_is_ignored() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, [0, 2])  # offset 1 is e.g. a transaction marker: never consumed

    tracker.finished(TP, 1)
    tracker.finished(TP, 7)

    assert len(tracker) == 2
    assert tracker.in_flight(TP) == 2


def test_a_late_report_from_a_lost_assignment_cannot_move_the_commit() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10))
    tracker.forget([TP])  # lost; the producer still holds outputs for 0..9
    consume(tracker, TP, [5])  # re-assigned, restarting from the committed offset 5

    tracker.finished(TP, 7)  # the old assignment's output for 7 is acknowledged now
    consume(tracker, TP, [6, 7])
    finish(tracker, TP, [5, 6])

    assert tracker.position(TP) == 7  # the new 7 has no output yet
    assert tracker.in_flight(TP) == 1


def test_commit_positions_returns_only_partitions_that_moved() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(5))
    consume(tracker, TP1, range(5))
    tracker.mark_committed(tracker.commit_positions())

    finish(tracker, TP, [0, 1])
    tracker.finished(TP1, 3)  # out of order: TP1 does not move

    assert tracker.commit_positions() == {TP: 2}


def test_commit_positions_honours_only() -> None:
    tracker = OffsetTracker()
    for tp in (TP, TP1, OTHER):
        consume(tracker, tp, range(3))
        tracker.finished(tp, 0)

    assert tracker.commit_positions(only=[TP1]) == {TP1: 1}
    assert tracker.commit_positions(only=[TP, ("gone", 9)]) == {TP: 1}
    assert tracker.commit_positions(only=[]) == {}
    assert tracker.commit_positions() == {TP: 1, TP1: 1, OTHER: 1}


def test_mark_committed_stops_resending_until_the_position_moves_again() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(5))
    finish(tracker, TP, [0, 1])

    positions = tracker.commit_positions()
    tracker.mark_committed(positions)

    assert positions == {TP: 2}
    assert tracker.commit_positions() == {}
    tracker.finished(TP, 2)
    assert tracker.commit_positions() == {TP: 3}


def test_a_failed_commit_is_resent_once_marked_with_an_impossible_position() -> None:
    # The worker marks -1 when an asynchronous commit fails, so the next call retries it.
    tracker = OffsetTracker()
    consume(tracker, TP, range(3))
    tracker.finished(TP, 0)
    tracker.mark_committed(tracker.commit_positions())

    tracker.mark_committed({TP: -1})

    assert tracker.commit_positions() == {TP: 1}


def test_mark_committed_of_an_unknown_partition_is_ignored() -> None:
    tracker = OffsetTracker()

    tracker.mark_committed({TP: 5})

    assert tracker.partitions() == []
    assert tracker.commit_positions() == {}


def test_forget_drops_the_in_flight_counts_of_those_partitions_only() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(10))
    consume(tracker, TP1, range(4))
    finish(tracker, TP, [0, 5, 6])  # 7 in flight, 2 of them behind 5 and 6

    dropped = tracker.forget([TP, ("never", 0)])

    assert dropped == 7
    assert len(tracker) == 4
    assert tracker.partitions() == [TP1]
    assert tracker.position(TP) is None
    assert tracker.in_flight(TP) == 0
    assert TP not in tracker.commit_positions()


def test_reports_for_a_forgotten_partition_are_ignored() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(3))
    tracker.forget([TP])

    finish(tracker, TP, range(3))

    assert len(tracker) == 0
    assert tracker.position(TP) is None
    assert tracker.commit_positions() == {}


def test_a_reassigned_partition_starts_afresh() -> None:
    tracker = OffsetTracker()
    consume(tracker, TP, range(3))
    tracker.finished(TP, 0)
    tracker.mark_committed(tracker.commit_positions())
    tracker.forget([TP])

    consume(tracker, TP, range(1, 4))

    assert tracker.position(TP) == 1
    assert tracker.commit_positions() == {TP: 1}  # a new assignment has committed nothing yet
    assert len(tracker) == 3


class Model:
    """What the tracker should know, kept the obvious way: sets of offsets."""

    def __init__(self) -> None:
        self.unfinished: dict[TopicPartitionKey, set[int]] = {}
        self.finished: dict[TopicPartitionKey, set[int]] = {}
        self.last: dict[TopicPartitionKey, int] = {}

    def expected_position(self, tp: TopicPartitionKey) -> int:
        unfinished = self.unfinished[tp]
        return min(unfinished) if unfinished else self.last[tp] + 1


def check(tracker: OffsetTracker, model: Model, committed: dict[TopicPartitionKey, int]) -> None:
    for tp, unfinished in model.unfinished.items():
        position = tracker.position(tp)
        assert position == model.expected_position(tp)
        assert all(position <= offset for offset in unfinished)
        assert tracker.in_flight(tp) == len(unfinished)
    assert len(tracker) == sum(len(u) for u in model.unfinished.values())
    positions = tracker.commit_positions()
    for tp, position in positions.items():
        assert all(position <= offset for offset in model.unfinished[tp])
        assert position > committed.get(tp, -1)  # commits only move forward
        committed[tp] = position
    tracker.mark_committed(positions)


def test_random_order_never_commits_past_a_record_in_flight() -> None:
    rng = random.Random(20_240_611)
    for _ in range(300):
        tracker, model = OffsetTracker(), Model()
        committed: dict[TopicPartitionKey, int] = {}
        tps = [("features", p) for p in range(rng.randint(1, 3))]
        next_offset = {tp: rng.randint(0, 1_000) for tp in tps}
        for _step in range(rng.randint(5, 60)):
            tp = rng.choice(tps)
            action = rng.random()
            if action < 0.35 or tp not in model.unfinished:
                for _ in range(rng.randint(1, 8)):
                    offset = next_offset[tp]
                    next_offset[tp] += rng.choice((1, 1, 1, 2, 5))  # gaps as in compaction
                    tracker.consumed(tp, offset)
                    model.unfinished.setdefault(tp, set()).add(offset)
                    model.finished.setdefault(tp, set())
                    model.last[tp] = offset
            elif action < 0.9 and model.unfinished[tp]:
                offset = rng.choice(sorted(model.unfinished[tp]))
                tracker.finished(tp, offset)
                model.unfinished[tp].discard(offset)
                model.finished[tp].add(offset)
            elif model.finished[tp]:
                tracker.finished(tp, rng.choice(sorted(model.finished[tp])))  # a duplicate
            check(tracker, model, committed)

        for tp, unfinished in model.unfinished.items():  # drain in random order
            for offset in rng.sample(sorted(unfinished), len(unfinished)):
                tracker.finished(tp, offset)
                unfinished.discard(offset)
                check(tracker, model, committed)
        assert len(tracker) == 0
        assert all(tracker.position(tp) == model.last[tp] + 1 for tp in model.last)


def test_a_late_report_after_the_record_was_consumed_again_is_told_apart() -> None:
    tracker = OffsetTracker()
    (old,) = {tracker.consumed(TP, o) for o in range(10)}
    tracker.forget([TP])  # lost; the producer still holds outputs for 0..9
    (new,) = {tracker.consumed(TP, o) for o in (5, 6, 7)}
    assert new != old

    tracker.finished(TP, 7, old)  # the old assignment's output, acknowledged late
    tracker.finished(TP, 5, new)
    tracker.finished(TP, 6, new)

    assert tracker.position(TP) == 7  # the new 7 has no output yet
    assert tracker.in_flight(TP) == 1

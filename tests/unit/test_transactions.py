"""How exactly-once ends a transaction that went wrong, without a broker.

The Kafka path itself (commits, aborts, fencing against a real broker) is tested in
tests/integration and tests/reliability; here a recording stand-in for the producer shows
which librdkafka calls each failure leads to.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.errors import DeliveryFailed
from pipeline.errors import KafkaError as PipelineKafkaError
from pipeline.kafka import committer as committer_module
from pipeline.kafka import transactions
from pipeline.kafka.committer import TransactionalCommitter
from pipeline.kafka.deadletter import MAX_OMIT
from pipeline.kafka.offsets import OffsetTracker
from pipeline.kafka.transactions import STEP_TIMEOUT_S, Transactions
from pipeline.metrics import Sensor


class RecordingProducer:
    """Records transactional calls; `fail` maps a call name to the exception it raises."""

    def __init__(self, settings: dict[str, Any], fail: dict[str, KafkaException]) -> None:
        self.settings = settings
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.on_abort: Any = None  # what abort_transaction serves from inside the call

    def _call(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise self.fail[name]

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self._call("send_offsets_to_transaction", timeout)

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction", timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction", timeout)
        if self.on_abort is not None:
            self.on_abort()

    def purge(self, **_: bool) -> None:
        self._call("purge")

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0


def _txn(
    fail: dict[str, KafkaException] | None = None, settings: dict[str, Any] | None = None
) -> tuple[Transactions, list[RecordingProducer]]:
    made: list[RecordingProducer] = []

    def make(conf: dict[str, Any]) -> Any:
        made.append(RecordingProducer(conf, (fail or {}) if not made else {}))
        return made[-1]

    txn = Transactions(settings or {}, transactional_id="t-1", make_producer=make)
    return txn, made


def _error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "test", **flags))


OFFSETS = [TopicPartition("in", 0, 42)]


def test_a_commit_sends_the_offsets_then_commits_within_the_step_timeout() -> None:
    txn, made = _txn()
    txn.begin()
    txn.commit(OFFSETS, object())
    assert [c for c, _ in made[0].calls] == [
        "init_transactions", "begin_transaction", "send_offsets_to_transaction",
        "commit_transaction",
    ]  # fmt: skip
    assert made[0].calls[2][1] == made[0].calls[3][1] == STEP_TIMEOUT_S
    assert (txn.open, txn.commits) == (False, 1)


def test_a_timed_out_step_is_not_retried_in_place_and_the_abort_rebuilds_the_producer() -> None:
    timeout = _error(KafkaError._TIMED_OUT, retriable=True)
    txn, made = _txn({"send_offsets_to_transaction": timeout})
    txn.begin()
    with pytest.raises(KafkaException):
        txn.commit(OFFSETS, object())
    assert [c for c, _ in made[0].calls].count("send_offsets_to_transaction") == 1
    txn.abort(timeout)
    # librdkafka still counts the timed-out step as in progress: no abort_transaction call,
    # a new producer with the same id instead (its init fences the old one).
    assert "abort_transaction" not in [c for c, _ in made[0].calls]
    assert [c for c, _ in made[0].calls][-2:] == ["purge", "flush"]
    assert len(made) == 2 and made[1].calls == [("init_transactions", None)]
    assert txn.producer is made[1] and made[1].settings["transactional.id"] == "t-1"


def test_an_abortable_error_is_aborted_on_the_same_producer() -> None:
    abortable = _error(KafkaError.INVALID_TXN_STATE, txn_requires_abort=True)
    txn, made = _txn({"commit_transaction": abortable})
    txn.begin()
    with pytest.raises(KafkaException):
        txn.commit(OFFSETS, object())
    txn.abort(abortable)
    assert made[0].calls[-1] == ("abort_transaction", STEP_TIMEOUT_S)
    assert len(made) == 1 and txn.aborts == 1


def test_a_fatal_error_rebuilds_and_a_failed_abort_rebuilds() -> None:
    txn, made = _txn({"abort_transaction": _error(KafkaError._STATE)})
    txn.begin()
    txn.abort(_error(KafkaError._FENCED, fatal=True))
    assert len(made) == 2
    txn.begin()
    made[1].fail = {"abort_transaction": _error(KafkaError._STATE)}
    txn.abort()
    assert len(made) == 3


def test_nothing_begun_means_nothing_to_abort() -> None:
    txn, made = _txn()
    txn.abort()
    assert [c for c, _ in made[0].calls] == ["init_transactions"] and txn.aborts == 0


def test_re_bootstrap_is_off_by_default_and_a_user_setting_wins() -> None:
    _, made = _txn()
    assert made[0].settings["metadata.recovery.strategy"] == "none"
    assert made[0].settings["transaction.timeout.ms"] == 15_000
    _, made = _txn(settings={"metadata.recovery.strategy": "rebootstrap"})
    assert made[0].settings["metadata.recovery.strategy"] == "rebootstrap"


def test_a_fenced_producer_that_raises_from_everything_is_still_replaced() -> None:
    # seen on a three-node cluster: after the coordinators' node died, the producer had a
    # fatal error and its flush raised it again, out of the abort, ending the worker
    fenced = _error(KafkaError._FENCED, fatal=True)
    txn, made = _txn({"abort_transaction": fenced, "purge": fenced, "flush": fenced})
    txn.begin()
    txn.abort(fenced)
    assert len(made) == 2 and txn.producer is made[1]


def test_init_transactions_is_tried_again_while_the_coordinator_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions.time, "sleep", lambda _: None)
    txn, made = _txn()
    moving = _error(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True)
    refused = {"init_transactions": moving}
    original = txn._make_producer

    def make(conf: dict[str, Any]) -> Any:
        producer = original(conf)
        if len(made) in (2, 3):  # the second and third producers find no coordinator
            producer.fail = dict(refused)
        return producer

    txn._make_producer = make
    txn.begin()
    txn.abort(_error(KafkaError._FENCED, fatal=True))
    assert len(made) == 4 and txn.producer is made[3]


def test_a_step_that_does_not_return_in_time_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # seen too: send_offsets_to_transaction with a 10 s timeout blocked for over 30 s
    monkeypatch.setattr(transactions, "STEP_TIMEOUT_S", 0.05)
    monkeypatch.setattr(transactions, "_STEP_MARGIN_S", 0.05)
    released = threading.Event()
    txn, made = _txn()
    made[0].send_offsets_to_transaction = lambda *_: released.wait(10)  # type: ignore[method-assign]
    txn.begin()
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        txn.commit(OFFSETS, object())
    assert time.monotonic() - started < 5
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
    txn.abort(raised.value)  # a timed-out step: rebuilt, not aborted in place
    assert len(made) == 2
    released.set()


class _Host:
    """What `TransactionalCommitter` sees of the worker: a real offset tracker, a consumer
    stand-in that has committed nothing, and outputs that are always acknowledged."""

    def __init__(self) -> None:
        self.tracker = OffsetTracker()
        self.assigned = [("in", 0)]
        self.consumer = self
        self.seeks: list[TopicPartition] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in parts]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp)

    def drain(self, timeout_s: float) -> int:
        return 0

    def discard_work(self) -> dict[tuple[str, int], int | None]:
        firsts = {tp: self.tracker.first_offset(tp) for tp in self.assigned}
        self.tracker.forget(self.assigned)
        return firsts

    def remember_refused(self, msg: Any, error: Any, omit: int) -> None:
        raise AssertionError("no record was refused")

    def fail(self, error: Exception) -> None:
        raise AssertionError(f"the worker was stopped: {error}")


class _Record:
    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


@pytest.mark.parametrize("served", ["after the abort", "inside the abort"])
def test_outputs_purged_by_an_abort_do_not_abort_the_next_transaction(served: str) -> None:
    # The group took the partition back: the open transaction is aborted, and its delivery
    # reports come failed with _PURGE_QUEUE: later, or (librdkafka's abort_transaction
    # purges and serves them before it returns) from inside the abort.
    host = _Host()
    txn, made = _txn()
    committer = TransactionalCommitter(
        cast(Any, host), txn, interval_ms=0, offset_reset="earliest", sensor=Sensor()
    )
    owed = (("in", 0), host.tracker.consumed_many(("in", 0), [7]))
    committer.begin()
    purged = KafkaError(KafkaError._PURGE_QUEUE)
    report = lambda: committer.output_failed(cast(Any, _Record()), purged, owed)  # noqa: E731
    if served == "inside the abort":
        made[0].on_abort = report
    committer.lost()
    made[0].on_abort = None
    if served == "after the abort":
        report()

    redo = (("in", 0), host.tracker.consumed_many(("in", 0), [7]))  # read again, a new generation
    assert redo[1] != owed[1]
    committer.begin()
    host.tracker.finished_many(*redo[:1], [7], redo[1])
    committer.tick(time.monotonic())
    calls = [c for c, _ in made[0].calls]
    assert calls.count("abort_transaction") == 1, calls
    assert calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"], calls

    # A failure of an output of the transaction still open does abort it.
    committer.begin()
    owed_now = (("in", 0), host.tracker.consumed_many(("in", 0), [8]))
    committer.output_failed(cast(Any, _Record()), KafkaError(KafkaError._MSG_TIMED_OUT), owed_now)
    committer.tick(time.monotonic())
    assert [c for c, _ in made[0].calls].count("abort_transaction") == 2


class _RefusingHost(_Host):
    """Remembers the refused records and the error that stopped the worker."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[int] = []
        self.failed: list[Exception] = []

    def remember_refused(self, msg: Any, error: Any, omit: int) -> None:
        self.refused.append(omit)

    def fail(self, error: Exception) -> None:
        self.failed.append(error)


def test_a_refused_dead_letter_is_redone_smaller_and_stops_the_worker_past_the_last_level() -> None:
    host = _RefusingHost()
    txn, _ = _txn()
    committer = TransactionalCommitter(
        cast(Any, host), txn, interval_ms=0, offset_reset="earliest", sensor=Sensor()
    )
    owed = (("in", 0), host.tracker.consumed_many(("in", 0), [7]))
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    committer.begin()
    for next_omit in range(1, MAX_OMIT + 1):
        committer.output_failed(cast(Any, _Record()), too_large, owed, next_omit=next_omit)
    assert host.refused == [1, 2, 3] and host.failed == []

    committer.output_failed(cast(Any, _Record()), too_large, owed, next_omit=MAX_OMIT + 1)
    (error,) = host.failed
    assert isinstance(error, DeliveryFailed)
    assert "in[0]@7" in str(error) and "even without its key" in str(error), error


class _StuckHost(_Host):
    """A consumer that holds a partition with no position, whose committed offsets time out
    (librdkafka waiting on UNSTABLE_OFFSET_COMMIT) while `stuck`, and a broker that answers
    metadata unless `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = True
        self.down = False

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("in", 0)]

    def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in parts]

    def list_topics(self, topic: str, timeout: float) -> object:
        if self.down:
            raise _error(KafkaError._TRANSPORT)
        return object()

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.stuck:
            raise _error(KafkaError._TIMED_OUT)
        return super().committed(parts, timeout)


def _stuck_committer() -> tuple[TransactionalCommitter, _StuckHost, list[RecordingProducer]]:
    host = _StuckHost()
    txn, made = _txn()
    committer = TransactionalCommitter(
        cast(Any, host), txn, interval_ms=100, offset_reset="earliest", sensor=Sensor()
    )
    return committer, host, made


def test_offsets_left_pending_with_no_marker_are_released_by_an_aborted_offsets_transaction() -> (
    None
):
    committer, host, made = _stuck_committer()
    start = time.monotonic()
    for second in range(0, 41, 10):  # checks at +10 s, +20 s, +30 s, +40 s
        committer.tick(start + second + 0.5)
    calls = [c for c, _ in made[0].calls]
    # unreadable first seen at +10 s; released at +30 s (20 s later), not before
    assert calls == [
        "init_transactions", "begin_transaction", "send_offsets_to_transaction",
        "abort_transaction",
    ], calls  # fmt: skip

    host.stuck = False  # the marker ended them: nothing more to do
    for second in range(50, 101, 10):
        committer.tick(start + second + 0.5)
    assert [c for c, _ in made[0].calls].count("begin_transaction") == 1


def test_unreadable_offsets_are_left_alone_while_the_broker_is_away_or_a_transaction_is_open() -> (
    None
):
    committer, host, made = _stuck_committer()
    host.down = True
    start = time.monotonic()
    for second in range(0, 61, 10):
        committer.tick(start + second + 0.5)
    assert [c for c, _ in made[0].calls] == ["init_transactions"]

    host.down = False
    host.drain = lambda timeout_s: 1  # type: ignore[method-assign]  # outputs unacknowledged
    committer.begin()  # so the transaction stays open across the commits
    for second in range(70, 131, 10):
        committer.tick(start + second + 0.5)
    assert [c for c, _ in made[0].calls] == ["init_transactions", "begin_transaction"]


def _fenced() -> KafkaException:
    return _error(KafkaError._FENCED, fatal=True)


def _always_failing(
    fail: dict[str, KafkaException],
) -> tuple[Transactions, list[RecordingProducer]]:
    made: list[RecordingProducer] = []

    def make(conf: dict[str, Any]) -> Any:
        made.append(RecordingProducer(conf, {} if not made else dict(fail)))
        return made[-1]

    return Transactions({}, transactional_id="twin-1", make_producer=make), made


def test_a_producer_fenced_once_is_rebuilt_and_fenced_again_soon_stops_naming_the_id() -> None:
    txn, made = _always_failing({"abort_transaction": _fenced()})
    txn.begin()
    txn.abort(_fenced())  # fenced once (a coordinator that moved, say): rebuilt
    assert len(made) == 2
    txn.begin()
    with pytest.raises(PipelineKafkaError, match="'twin-1' was fenced twice") as raised:
        txn.abort(None)  # abort_transaction says fenced again: another live twin
    assert "--transactional-id" in str(raised.value) and "\n" not in str(raised.value)
    assert len(made) == 2  # no third producer: it would fence the twin in turn


def test_a_producer_fenced_while_idle_is_rebuilt_by_begin() -> None:
    txn, made = _txn({"begin_transaction": _fenced()})
    txn.begin()
    assert len(made) == 2 and txn.open
    assert [c for c, _ in made[1].calls] == ["init_transactions", "begin_transaction"]


def test_close_aborts_within_its_bound_and_never_rebuilds() -> None:
    txn, made = _txn({"abort_transaction": _error(KafkaError._TRANSPORT, retriable=True)})
    txn.begin()
    txn.close()
    assert len(made) == 1 and not txn.open
    assert ("abort_transaction", transactions.CLOSE_ABORT_S) in made[0].calls
    assert "purge" in [c for c, _ in made[0].calls]


def test_a_rebuild_gives_up_soon_after_the_worker_is_asked_to_stop() -> None:
    # issue 30 item 7: the broker gone, a rebuild's init_transactions waits 30 s a try for
    # up to 120 s; a SIGTERM meanwhile must not wait for it (the README promises 30 s)
    stop = threading.Event()
    released = threading.Event()
    made: list[RecordingProducer] = []

    def make(conf: dict[str, Any]) -> Any:
        made.append(RecordingProducer(conf, {}))
        if len(made) > 1:  # the rebuilt producer finds no broker
            made[-1].init_transactions = lambda _: released.wait(10)  # type: ignore[method-assign]
        return made[-1]

    txn = Transactions({}, transactional_id="t-1", make_producer=make, stopping=stop.is_set)
    txn.begin()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(transactions.Stopping, match="'t-1'"):
        txn.abort(_error(KafkaError._FENCED, fatal=True))
    assert time.monotonic() - started < 2
    assert not txn.open
    released.set()


class _MovingCoordinator:
    """A consumer whose group coordinator is moving: committed() answers `errors` in turn
    (as librdkafka does in a rolling restart, NOT_COORDINATOR not flagged retriable),
    then the offsets."""

    def __init__(self, *errors: KafkaException) -> None:
        self.errors = list(errors)
        self.asked = 0

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in parts]

    def list_topics(self, topic: str, timeout: float) -> None:
        return None


def test_committed_offsets_are_asked_again_while_the_group_coordinator_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer_module.time, "sleep", lambda _: None)
    consumer = _MovingCoordinator(
        _error(KafkaError.NOT_COORDINATOR),
        _error(KafkaError.COORDINATOR_LOAD_IN_PROGRESS),
        _error(KafkaError._TRANSPORT),
    )
    released: list[str] = []
    got = committer_module._committed(
        consumer, [TopicPartition("in", 0)], release=lambda parts, why: released.append(why)
    )
    assert [tp.offset for tp in got] == [7] and consumer.asked == 4 and not released


def test_a_committed_offsets_error_that_time_cannot_cure_is_raised_at_once() -> None:
    consumer = _MovingCoordinator(_error(KafkaError.GROUP_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):
        committer_module._committed(
            consumer, [TopicPartition("in", 0)], release=lambda parts, why: None
        )
    assert consumer.asked == 1

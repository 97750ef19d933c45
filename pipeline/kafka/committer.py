"""Two guarantees, two committers: how finished input offsets become committed.

The worker's loop only asks a committer to commit what is finished (`Committer.tick`), to
finish the work of partitions it gives up (`revoked`, `lost`), and to close; how that
happens is the committer's business:

- `AtLeastOnceCommitter`: outputs go through a plain idempotent producer; finished offsets
  are committed to the group asynchronously every ``commit_interval_ms`` or every
  ``commit_every_events`` finished inputs, whichever comes first, one commit at a time
  (a commit due while another is unanswered waits and carries the newer positions). A
  delivery that fails for good stops the worker without committing past it.
- `TransactionalCommitter`: outputs go through a transactional producer
  (`pipeline.kafka.transactions`); at each commit every pending batch is finished and the
  finished offsets are sent to the transaction, so outputs and offsets become visible
  together. A failed delivery aborts the transaction and rewinds to the committed offsets.

Both see the worker only through the small `Host` protocol.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError

from pipeline.errors import DeliveryFailed, KafkaError
from pipeline.kafka.deadletter import MAX_OMIT
from pipeline.kafka.offsets import OffsetTracker, Owed, TopicPartitionKey
from pipeline.kafka.transactions import Stopping, Transactions, passing
from pipeline.metrics import Sensor

__all__ = ["AtLeastOnceCommitter", "Committer", "Host", "TransactionalCommitter"]

log = logging.getLogger("pipeline.worker")

DRAIN_TIMEOUT_S = 10.0  # how long a revoke or a transaction waits for outputs to be acknowledged
_UNANSWERED_COMMIT_S = 10.0  # an async commit unanswered this long no longer holds back the next
# A final commit that meets a rebalance is tried again, between turns of the group protocol,
# for this long (a clean stop within the README's 30 s).
_FINAL_COMMIT_S = 5.0
_PURGED = frozenset((RdKafkaError._PURGE_QUEUE, RdKafkaError._PURGE_INFLIGHT))  # by our aborts
_REBALANCING = frozenset((
    RdKafkaError.ILLEGAL_GENERATION,
    RdKafkaError.UNKNOWN_MEMBER_ID,
    RdKafkaError.REBALANCE_IN_PROGRESS,
))  # fmt: skip


class Host(Protocol):
    """What a committer needs of the worker."""

    @property
    def consumer(self) -> Consumer:
        """The worker's consumer."""
        ...

    @property
    def tracker(self) -> OffsetTracker:
        """Which input offsets are finished."""
        ...

    def drain(self, timeout_s: float) -> int:
        """Run every waiting batch, produce its outputs and wait for their acknowledgement;
        return how many outputs are still unacknowledged."""
        ...

    def discard_work(self) -> dict[TopicPartitionKey, int | None]:
        """Drop all work in flight and stop tracking the partitions held; return each
        one's first offset consumed in this assignment (None if none was)."""
        ...

    def remember_refused(self, msg: Message, error: RdKafkaError, omit: int) -> None:
        """The broker refused an output of `msg`: write it as a dead letter when redone,
        leaving out what `omit` says (see `pipeline.kafka.deadletter.dead_letter`)."""
        ...

    def fail(self, error: KafkaError) -> None:
        """Stop the worker with `error` (nothing past unfinished work is committed)."""
        ...

    def serve_group(self, timeout_s: float) -> None:
        """Take part in the group's rebalance for up to `timeout_s` without taking new work
        (a record that still arrives is left unfinished, so never committed)."""
        ...


class Committer(Protocol):
    """How the worker's finished offsets are committed (see the module docstring)."""

    @property
    def producer(self) -> Producer:
        """Where outputs are produced (rebuilt after fencing, so never cached)."""
        ...

    @property
    def dead_letters_for_refused(self) -> bool:
        """Whether an output the broker refuses may be dead-lettered at once (otherwise the
        committer redoes its input, see `Host.remember_refused`)."""
        ...

    def begin(self) -> None:
        """Called before outputs are produced."""

    def finished(self, n: int) -> None:
        """`n` more inputs are finished (their outputs acknowledged)."""

    def tick(self, now: float) -> None:
        """Commit what is finished, if a commit is due."""

    def revoked(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """The worker gives up `partitions`, their work drained: commit it now."""

    def lost(self) -> None:
        """Partitions were lost without a clean revoke."""

    def on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's commit callback."""

    def output_failed(
        self, msg: Message, err: RdKafkaError, owed: Owed, *, next_omit: int = 1, to: str = ""
    ) -> None:
        """An output of `msg` (read in the assignment `owed`) to topic `to` failed for good.
        If the record was refused, a redo writes `msg`'s dead letter at the ``omit`` level
        `next_omit`; past `MAX_OMIT` it cannot be written in any form. If the topic is
        gone, the worker stops (a restart creates it as configured)."""

    def producer_failed(self, reason: str) -> None:
        """The producer refuses records altogether."""

    def close(self, *, fatal: bool) -> None:
        """The worker stops: commit what is finished, or (fatal) end without committing
        more than what was acknowledged."""


class AtLeastOnceCommitter:
    """Commits finished offsets to the group, asynchronously, one commit at a time."""

    dead_letters_for_refused = True

    def __init__(
        self,
        host: Host,
        producer: Producer,
        *,
        interval_ms: int,
        every_events: int,
        clock: Any = time.monotonic,
    ) -> None:
        self._host = host
        self._producer = producer
        self._interval_s = interval_ms / 1000
        self._every = every_events
        self._clock = clock
        self._next = clock() + self._interval_s
        self._since = 0
        self._unanswered_since: float | None = None

    @property
    def producer(self) -> Producer:
        return self._producer

    def begin(self) -> None:
        pass

    def finished(self, n: int) -> None:
        self._since += n

    def tick(self, now: float) -> None:
        if now < self._next and self._since < self._every:
            return
        if (
            self._unanswered_since is not None
            and now - self._unanswered_since < _UNANSWERED_COMMIT_S
        ):
            return  # coalesced: the next commit carries the newer positions
        self._next = now + self._interval_s
        self._since = 0
        self._commit(asynchronous=True)

    def revoked(self, partitions: Sequence[TopicPartitionKey]) -> None:
        self._commit(asynchronous=False, only=partitions)

    def lost(self) -> None:
        pass

    def on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        self._unanswered_since = None
        failed = partitions if err is not None else [p for p in partitions if p.error]
        if failed:
            log.warning("offset commit of %s failed (will retry): %s",
                        names(failed), err or failed[0].error)  # fmt: skip
            # -1 is never a position: the next commit sends these partitions again.
            self._host.tracker.mark_committed({(p.topic, p.partition): -1 for p in failed})

    def output_failed(
        self, msg: Message, err: RdKafkaError, owed: Owed, *, next_omit: int = 1, to: str = ""
    ) -> None:
        self._host.fail(undelivered(msg, err, next_omit, to))

    def producer_failed(self, reason: str) -> None:
        self._host.fail(
            DeliveryFailed(
                f"the producer refused outputs ({reason}); stopping without committing past "
                "them, so a restart redoes them. Check the broker and the output topics"
            )
        )

    def close(self, *, fatal: bool) -> None:
        if fatal:  # only offsets whose outputs were acknowledged
            self._producer.flush(DRAIN_TIMEOUT_S)
        self._final_commit()

    def _final_commit(self) -> None:
        """Commit what is finished; a commit that meets a rebalance (a member joining as
        this one stops) is tried again once the group has moved on, within
        `_FINAL_COMMIT_S`: otherwise the next owner would redo, and duplicate, all of it."""
        deadline = self._clock() + _FINAL_COMMIT_S
        while True:
            error = self._commit(asynchronous=False)
            if error is None or error.code() not in _REBALANCING:
                return
            if self._clock() >= deadline:
                log.warning("the final offset commit kept meeting a rebalance (%s): the next "
                            "owner redoes the events since the last commit", error)  # fmt: skip
                return
            log.info("the final offset commit met a rebalance (%s): trying again", error)
            self._host.serve_group(0.5)

    def _commit(
        self, *, asynchronous: bool, only: Sequence[TopicPartitionKey] | None = None
    ) -> RdKafkaError | None:
        """Commit the finished positions (of `only`, if given); return the error of a
        synchronous commit that failed, in whole or for some partition."""
        tracker = self._host.tracker
        # A synchronous commit (a revoke, the last one) while an asynchronous one is
        # unanswered sends its positions again: that one may yet fail (a rebalance moved the
        # generation), and these partitions are given up now, so no later commit would.
        again = not asynchronous and self._unanswered_since is not None
        positions = tracker.commit_positions(only, again=again)
        if not positions:
            return None
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        consumer = self._host.consumer
        failed: RdKafkaError | None = None
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
                self._unanswered_since = self._clock()
            else:
                for p in consumer.commit(offsets=offsets, asynchronous=False) or []:
                    if p.error:
                        log.warning("offset commit of %s[%d] failed: %s",
                                    p.topic, p.partition, p.error)  # fmt: skip
                        positions.pop((p.topic, p.partition), None)
                        failed = p.error
        except KafkaException as exc:
            log.warning("offset commit failed (will retry): %s", exc.args[0])
            error = exc.args[0] if exc.args else None
            return error if isinstance(error, RdKafkaError) else None
        tracker.mark_committed(positions)
        return failed


class TransactionalCommitter:
    """Commits outputs and offsets in one Kafka transaction per interval."""

    dead_letters_for_refused = False

    def __init__(
        self,
        host: Host,
        transactions: Transactions,
        *,
        interval_ms: int,
        offset_reset: str,
        sensor: Sensor,
    ) -> None:
        self._host = host
        self._txn = transactions
        self._interval_s = interval_ms / 1000
        self._reset = OFFSET_BEGINNING if offset_reset == "earliest" else OFFSET_END
        self._sensor = sensor
        self._next = time.monotonic()
        self._abort_pending = False
        self._next_check = time.monotonic() + _UNREAD_CHECK_S
        self._unreadable_since: float | None = None
        self._closing = False

    @property
    def producer(self) -> Producer:
        return self._txn.producer

    def begin(self) -> None:
        try:
            self._txn.begin()
        except KafkaException as exc:
            self._host.fail(KafkaError(
                f"no transaction could be begun as {self._txn.transactional_id!r} "
                f"({exc.args[0]}), even with a new producer; check the broker"
            ))  # fmt: skip
        except KafkaError as exc:  # the rebuild was refused
            self._host.fail(exc)
        except Stopping as exc:  # what is produced now is refused and never committed
            log.warning("%s: leaving the outputs to a restart", exc)

    def finished(self, n: int) -> None:
        pass

    def tick(self, now: float) -> None:
        if now >= self._next:
            self._next = now + self._interval_s
            self._commit(final=False)
        if now >= self._next_check:
            self._next_check = now + _UNREAD_CHECK_S
            self._check_unreadable(now)

    def revoked(self, partitions: Sequence[TopicPartitionKey]) -> None:
        self._commit(final=True)

    def lost(self) -> None:
        if self._txn.open:  # its outputs may belong to the lost partitions
            self._abort_and_rewind(None, "partitions were lost")

    def on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        pass  # offsets are committed by the transaction, never by the consumer

    def output_failed(
        self, msg: Message, err: RdKafkaError, owed: Owed, *, next_omit: int = 1, to: str = ""
    ) -> None:
        if err.code() in _PURGED or not self._host.tracker.holds(owed):
            # An output of a transaction that was already aborted (the abort purged it, or it
            # timed out): its input is redone from the committed offsets, and its delivery
            # report, served after the abort, must not abort the next transaction too. A
            # purged output is always such a one, even when its partition was consumed
            # again since: only an abort or a producer given up purges.
            log.debug("ignoring a failed output of an aborted transaction (%s)", err)
            return
        if not self._abort_pending:  # one line per transaction, not one per output
            log.warning("output for %s[%s]@%s failed (%s): aborting the transaction",
                        msg.topic(), msg.partition(), msg.offset(), err)  # fmt: skip
        if err.code() in MISSING_TOPIC or (err.code() in REFUSED_RECORD and next_omit > MAX_OMIT):
            self._host.fail(undelivered(msg, err, next_omit, to))  # a redo would fail again
            return
        if err.code() in REFUSED_RECORD:
            # A refused record makes the transaction abortable; the redo writes this
            # input as a dead letter one level smaller (without its value first).
            self._host.remember_refused(msg, err, next_omit)
        self._abort_pending = True

    def producer_failed(self, reason: str) -> None:
        # A fenced or failed transactional producer: the commit step aborts (rebuilding the
        # producer) and redoes from the committed offsets.
        log.warning("produce failed in the transaction (%s): will abort", reason)
        self._abort_pending = True

    def close(self, *, fatal: bool) -> None:
        self._closing = True  # from here on an abort never rebuilds, and nothing is redone
        if not fatal:  # the worker has just drained: what is unacknowledged now stays so
            self._commit(final=True, drain_s=0.0)
        if self._txn.open:  # nothing of the open transaction becomes visible
            self._txn.close()
            self._sensor.transaction("aborted")

    def _commit(self, *, final: bool, drain_s: float = DRAIN_TIMEOUT_S) -> None:
        """Finish every pending batch, then commit outputs and offsets in one transaction.

        The offsets sent are those whose outputs were acknowledged, so every output in the
        transaction must be: committing with some still in flight would make them visible
        while their inputs stay uncommitted, to be redone (duplicated) later. Then the
        commit waits for the next turn; a `final` one (revoke, shutdown) aborts instead.
        """
        if not self._txn.open and not self._abort_pending:
            return
        unacknowledged = self._host.drain(drain_s)
        if self._abort_pending:
            self._abort_and_rewind(None, "an output was not delivered")
            return
        if unacknowledged:
            if final:
                self._abort_and_rewind(None, f"{unacknowledged} outputs were not acknowledged")
            return
        tracker = self._host.tracker
        positions = tracker.commit_positions()
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self._txn.commit(offsets, self._host.consumer.consumer_group_metadata())
        except KafkaException as exc:
            self._abort_and_rewind(exc)
            return
        self._sensor.transaction("committed")
        tracker.mark_committed(positions)

    def _check_unreadable(self, now: float) -> None:
        """Release this producer's pending offsets if they keep the group's committed offsets
        unreadable.

        Partitions held without a position are waiting for their committed offsets (or are
        idle). If the broker answers but those offsets stay unreadable for
        `_UNREAD_LIMIT_S`, a transactional offset commit is pending that no marker will end:
        a broker that stopped while answering this producer's commit can acknowledge it and
        lose its markers (seen with a single Kafka 4.3 broker), and librdkafka waits on
        UNSTABLE_OFFSET_COMMIT for good. An aborted transaction of this producer that sends
        offsets to the group writes the marker that ends them, and the lost commit's inputs
        are redone from the offsets committed before it: nothing is lost. Its outputs are
        decided by the next marker this producer writes on their partitions: aborted, they
        never show; committed, they show twice (T2 saw both).
        """
        if self._txn.open or self._abort_pending:
            self._unreadable_since = None  # outputs are being made: something was read
            return
        consumer = self._host.consumer
        try:
            held = consumer.assignment()
            unread = [tp for tp in consumer.position(held) if tp.offset < 0] if held else []
            if not unread or _committed_readable(consumer, unread):
                self._unreadable_since = None
                return
        except KafkaException as exc:
            log.debug("checking for unreadable committed offsets failed: %s", exc.args[0])
            return
        self._unreadable_since = self._unreadable_since or now
        if now - self._unreadable_since < _UNREAD_LIMIT_S:
            return
        self._unreadable_since = None
        self._release(unread, f"{_UNREAD_LIMIT_S:.0f} s")

    def _release(self, unread: list[TopicPartition], how_long: str) -> None:
        """Abort this producer's pending offsets in the group (see `_check_unreadable`)."""
        log.warning(
            "the committed offsets of %s stayed unreadable for %s while the broker answers "
            "(UNSTABLE_OFFSET_COMMIT: a transaction's offsets are pending). A dead worker's "
            "transaction ends by its timeout; this producer's own pending offsets, which a "
            "broker that stopped mid-commit can leave with no marker, are aborted now and "
            "their inputs redone",
            names(unread), how_long,
        )  # fmt: skip
        offsets = [TopicPartition(tp.topic, tp.partition, 0) for tp in unread]
        try:
            self._txn.abort_offsets(offsets, self._host.consumer.consumer_group_metadata())
        except KafkaException as exc:
            log.warning("releasing the pending offsets failed (%s): will try again", exc.args[0])
            self._abort(exc)
        self._sensor.transaction("aborted")

    def _abort(self, cause: KafkaException | None) -> bool:
        """Abort the open transaction (rebuilding the producer if need be); False, and the
        worker stopped, if the producer may not be rebuilt."""
        try:
            self._txn.abort(cause)
        except KafkaError as exc:
            self._host.fail(exc)
            return False
        except Stopping as exc:  # the shutdown that follows leaves everything to a restart
            log.warning("%s: the coordinator aborts the open transaction", exc)
            return False
        return True

    def _abort_and_rewind(self, cause: KafkaException | None, reason: object = None) -> None:
        """Abort the transaction and redo everything since the last committed offsets.

        A partition the group has no committed offset for yet rewinds to the first offset
        consumed in this assignment, not to the reset policy (which, for ``latest``, would
        skip what the aborted transaction consumed).
        """
        reason = cause.args[0] if cause is not None else reason
        self._abort_pending = False
        if self._closing:  # the next worker redoes it from the committed offsets
            log.warning("transaction aborted at shutdown (%s)", reason)
            self._txn.close()
            self._sensor.transaction("aborted")
            return
        log.warning("transaction aborted (%s): rewinding to the committed offsets", reason)
        # The work is dropped before the abort: librdkafka's abort_transaction (and the
        # purge of a rebuild) serves the delivery reports of the outputs it purges from
        # inside the call, and those must find their inputs no longer held (`output_failed`
        # ignores them) instead of marking the next transaction for an abort too.
        firsts = self._host.discard_work()
        aborted = self._abort(cause)
        self._sensor.transaction("aborted")
        if not aborted or not firsts:
            return
        parts = [TopicPartition(t, p) for t, p in sorted(firsts)]
        consumer = self._host.consumer
        try:
            committed = _committed(consumer, parts, release=self._release)
            for tp in committed:
                first = firsts.get((tp.topic, tp.partition))
                offset = tp.offset if tp.offset >= 0 else first
                consumer.seek(
                    TopicPartition(
                        tp.topic, tp.partition, self._reset if offset is None else offset
                    )
                )
        except KafkaException as exc:
            # Reading on from here would skip the aborted events; a restart redoes them.
            self._host.fail(
                KafkaError(
                    f"after an aborted transaction the committed offsets of {names(parts)} "
                    f"could not be read or sought to ({exc.args[0]}); stopping so a restart "
                    "resumes from them. Check that the broker is reachable"
                )
            )


_COMMITTED_DEADLINE_S = 90.0  # a group coordinator that moved answers again well within it
_COMMITTED_TIMEOUT_S = 30.0  # one ask for the committed offsets
_UNREAD_CHECK_S = 10.0  # how often partitions held without a position are looked at
_UNREAD_LIMIT_S = 20.0  # committed offsets unreadable this long (broker answering): release
_PROBE_TIMEOUT_S = 2.0  # reading committed offsets takes milliseconds when they are stable
_TIMED_OUT = RdKafkaError._TIMED_OUT
_UNREADABLE = frozenset((_TIMED_OUT, RdKafkaError.UNSTABLE_OFFSET_COMMIT))  # offsets pending


def _committed_readable(consumer: Any, parts: list[TopicPartition]) -> bool:
    """Whether the group's committed offsets of `parts` can be read now; False when the
    broker answers metadata but the offsets do not come (librdkafka retries
    UNSTABLE_OFFSET_COMMIT until its timeout).

    Raises:
        KafkaException: the broker does not answer at all (nothing to conclude).
    """
    consumer.list_topics(parts[0].topic, timeout=_PROBE_TIMEOUT_S)
    try:
        committed = consumer.committed(parts, timeout=_PROBE_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, RdKafkaError) and error.code() in _UNREADABLE:
            return False
        raise
    return not any(tp.error is not None and tp.error.code() in _UNREADABLE for tp in committed)


def _committed(
    consumer: Any,
    parts: list[TopicPartition],
    *,
    release: Callable[[list[TopicPartition], str], None],
) -> list[TopicPartition]:
    """The group's committed offsets of `parts`, asked again while the answer is a retriable
    error (the group coordinator moving to another node, say). If they time out while the
    broker answers metadata, this producer's pending offsets are released once (`release`,
    see `TransactionalCommitter._check_unreadable`) before asking again.

    Raises:
        KafkaException: a lasting or non-retriable error.
    """
    deadline = time.monotonic() + _COMMITTED_DEADLINE_S
    released = False
    while True:
        try:
            committed: list[TopicPartition] = consumer.committed(
                parts, timeout=_COMMITTED_TIMEOUT_S
            )
            unread = [tp for tp in committed if tp.error is not None]
            if not unread:
                return committed
            raise KafkaException(unread[0].error)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not passing(error) or time.monotonic() >= deadline:
                raise
            log.warning("reading the committed offsets failed (%s): asking again", error)
            if not released and isinstance(error, RdKafkaError) and error.code() == _TIMED_OUT:
                with contextlib.suppress(KafkaException):
                    consumer.list_topics(parts[0].topic, timeout=_PROBE_TIMEOUT_S)
                    released = True
                    release(parts, f"{_COMMITTED_TIMEOUT_S:.0f} s")
            time.sleep(1.0)


def undelivered(msg: Message, err: RdKafkaError, next_omit: int, to: str) -> DeliveryFailed:
    """The error that stops the worker when an output of `msg` to topic `to` failed for
    good: its topic is gone, a dead letter refused in every form (`next_omit` past
    `MAX_OMIT`), or any other failure."""
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    if err.code() in MISSING_TOPIC:
        return DeliveryFailed(
            f"the output for {where} was not delivered: topic {to!r} does not exist ({err}; "
            "deleted while the worker ran?). Stopping without committing past it: a restart "
            "creates the topic with --topic-partitions and redoes it"
        )
    if err.code() in REFUSED_RECORD and next_omit > MAX_OMIT:
        return DeliveryFailed(
            f"the dead letter for {where} was refused even without its key, value and "
            f"headers ({err}); stopping without committing past it. Check the dead-letter "
            "topic's max.message.bytes and the producer's message.max.bytes (-X)"
        )
    return DeliveryFailed(
        f"the output for {where} to {to or 'its topic'!r} was not delivered ({err}); stopping "
        "without committing past it, so a restart will redo it. Check the broker, or raise "
        "delivery.timeout.ms with -X"
    )


# Errors that say the output's topic is gone (the producer never re-creates it: its
# allow.auto.create.topics is off, or the broker would make it with its own defaults).
# _DESTROY ("Broker handle destroyed") is what librdkafka reports for the outputs queued on
# a partition that the metadata stopped showing (the topic deleted as they were written):
# the worker's own producer is never destroyed while it runs.
MISSING_TOPIC = frozenset(
    (
        RdKafkaError._UNKNOWN_TOPIC,
        RdKafkaError._UNKNOWN_PARTITION,
        RdKafkaError.UNKNOWN_TOPIC_OR_PART,
        RdKafkaError._DESTROY,
    )
)
# Errors that say the record itself is unacceptable (too large, malformed).
REFUSED_RECORD = frozenset(
    (RdKafkaError.MSG_SIZE_TOO_LARGE, RdKafkaError.INVALID_RECORD, RdKafkaError.INVALID_MSG)
)


def names(partitions: Sequence[TopicPartition]) -> str:
    """``topic[partition], ...`` for log lines and messages."""
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"

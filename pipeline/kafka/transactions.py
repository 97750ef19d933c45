"""Exactly-once output: the producer side of Kafka's consume-transform-produce transactions.

In ``--guarantee exactly-once`` mode the worker's producer is transactional. Every output
(prediction or dead letter) is written inside an open transaction; at each commit the
consumed offsets are sent to the same transaction with the consumer's group metadata
(KIP-447) and the transaction commits, so outputs and offsets become visible together or
not at all. Consumers of the output must read with ``isolation.level=read_committed``.

`Transactions` owns the producer and its state; the worker decides when to commit and
what to do after an abort (rewind to the committed offsets and redo).

Every transactional step is bounded (`STEP_TIMEOUT_S`) and never retried in place: while
the worker blocks in a step it does not poll its consumer, so a group that is rebalancing
(after a broker restart, say) waits for it, and the step can wait for the group. A step
that fails or times out ends the transaction instead, and the worker returns to its loop.
After a timeout librdkafka still counts the step as in progress and refuses an abort, so
the producer is rebuilt: a new producer with the same transactional.id fences the old one
and the coordinator aborts its open transaction.

Two things the fault suite found on a three-node cluster whose coordinators' node failed:
librdkafka's own step timeout does not always hold (``send_offsets_to_transaction`` with
10 s blocked for over 30 s), so each step runs on a helper thread and the worker stops
waiting for it after the step timeout and a margin, leaving it to the producer being
replaced; and a producer with a fatal error (fenced by the coordinator that took over)
raises from anything, ``flush`` included, so its replacement does not ask it anything, and
``init_transactions`` is tried again while the coordinator moves.

A rebuild fences every other producer with the same transactional.id. Two live workers
started alike with one ``--transactional-id`` (an operator's mistake) would fence each
other for ever, so a producer fenced again within `FENCED_AGAIN_S` of being fenced is not
rebuilt: the worker stops with an error that names the id, and the other goes on.

At shutdown (`close`) the open transaction is aborted within `CLOSE_ABORT_S`, never
rebuilt: the worker is leaving, and a transaction it cannot abort (the broker is gone) is
aborted by the coordinator after ``transaction.timeout.ms``; nothing of it ever shows.
A rebuild already under way when the worker is asked to stop (the broker gone, it can take
`_INIT_DEADLINE_S`) gives up within `_STOP_CHECK_S` and raises `Stopping`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer, TopicPartition

from pipeline.config import TRANSACTION_TIMEOUT_MS
from pipeline.errors import KafkaError

__all__ = ["Stopping", "Transactions", "default_transactional_id", "passing"]

log = logging.getLogger("pipeline.transactions")
STEP_TIMEOUT_S = 10.0  # send offsets, commit, abort: milliseconds when the broker is well
_INIT_TIMEOUT_S = 30.0  # init_transactions, which may wait for an earlier transaction to end
_INIT_DEADLINE_S = 120.0  # init_transactions is tried again on retriable errors until then
_STEP_MARGIN_S = 5.0  # beyond librdkafka's own step timeout, before the worker stops waiting
CLOSE_ABORT_S = 3.0  # the abort at shutdown (SIGTERM's promise: exit within 30 s)
_STOP_CHECK_S = 0.2  # how often a rebuild looks whether the worker was asked to stop
FENCED_AGAIN_S = 60.0  # fenced again this soon after a rebuild: another live worker has the id
_FENCED = frozenset((RdKafkaError._FENCED, RdKafkaError.PRODUCER_FENCED))
# Errors that pass by themselves while brokers restart, though librdkafka does not always
# flag them retriable: a group or transaction coordinator moving to another node (a rolling
# restart answers committed() with NOT_COORDINATOR, unflagged), a leader changing, a timeout.
_PASSING = frozenset(
    (
        RdKafkaError._TIMED_OUT,
        RdKafkaError._TRANSPORT,
        RdKafkaError._WAIT_COORD,
        RdKafkaError._ALL_BROKERS_DOWN,
        RdKafkaError.REQUEST_TIMED_OUT,
        RdKafkaError.NOT_COORDINATOR,
        RdKafkaError.COORDINATOR_NOT_AVAILABLE,
        RdKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        RdKafkaError.NOT_LEADER_FOR_PARTITION,
    )
)


def passing(error: object) -> bool:
    """Whether `error` is one that asking again after a while can cure."""
    return isinstance(error, RdKafkaError) and (error.retriable() or error.code() in _PASSING)


# -X can override both.
_PRODUCER_DEFAULTS = {
    # librdkafka 2.16 re-bootstraps when every broker was unreachable (a single broker
    # that restarted, say), and the transactional producer can then keep the old,
    # decommissioned group coordinator: send_offsets_to_transaction never sends its
    # TxnOffsetCommit and times out. Without re-bootstrap it reconnects to the same brokers.
    "metadata.recovery.strategy": "none",
    # A worker that dies leaves its transaction open, and read_committed consumers of the
    # output partitions it wrote see nothing past it until the coordinator aborts it,
    # after transaction.timeout.ms (librdkafka's default: 60 s; the fault suite measured a
    # 60.3 s pause). A restart does not fence it sooner: the default transactional.id ends
    # in the pid. Our transactions last one commit interval plus a few bounded steps.
    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
}


class Stopping(Exception):
    """The worker was asked to stop while the transactional producer was being rebuilt: no
    transaction is open, and the coordinator aborts the one the old producer left."""


def default_transactional_id(group_id: str, index: int) -> str:
    """Unique per live worker process: group, host, index under its parent, and pid.

    Zombie fencing does not need a stable id here: with the consumer's group metadata sent
    to each transaction (KIP-447), the group coordinator fences an instance that lost its
    partitions. A shared id would instead make two live workers fence each other.
    """
    return f"pipeline-{group_id}-{socket.gethostname()}-{index}-{os.getpid()}"


class Transactions:
    """A transactional producer that is begun lazily, committed with offsets, and rebuilt
    after a fatal error (fencing)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        transactional_id: str,
        make_producer: Callable[[dict[str, Any]], Producer] = Producer,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = {**_PRODUCER_DEFAULTS, **settings, "transactional.id": transactional_id}
        self._make_producer = make_producer
        self._stopping = stopping
        self.transactional_id = transactional_id
        self.producer = self._new_producer()
        self.open = False
        self.commits = 0
        self.aborts = 0
        self._fenced_at: float | None = None  # when a fencing last rebuilt the producer

    def _new_producer(self, *, deadline_s: float = _INIT_TIMEOUT_S) -> Producer:
        """A producer whose transactions are initialized (which fences any earlier producer
        with this id); retriable failures are tried again until `deadline_s` has passed.

        Raises:
            KafkaError: transactions could not be started.
            Stopping: the worker was asked to stop meanwhile.
        """
        deadline = time.monotonic() + deadline_s
        while True:
            producer = self._make_producer(dict(self._settings))
            try:
                self._unless_stopping(partial(producer.init_transactions, _INIT_TIMEOUT_S))
                return producer
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not passing(error) or time.monotonic() >= deadline:
                    raise KafkaError(
                        f"could not start transactions as {self.transactional_id!r} "
                        f"({error}); exactly-once needs a broker with transactions enabled "
                        "(transaction state log replication <= brokers) and the principal "
                        "allowed to write with this transactional id"
                    ) from exc
                log.warning("init_transactions failed (%s): trying again", error)
                self._unless_stopping(lambda: time.sleep(1.0))

    def _unless_stopping(self, step: Callable[[], object]) -> None:
        """Run `step` on a helper thread, looking every `_STOP_CHECK_S` whether the worker
        was asked to stop (the main thread runs signal handlers while it waits).

        Raises:
            Stopping: it was; the step goes on, unwaited for, on its daemon thread.
        """
        thread, failure = _on_thread("txn-init", step)
        while thread.is_alive():
            if self._stopping():
                raise Stopping(f"stopping while {self.transactional_id!r} was being rebuilt")
            thread.join(_STOP_CHECK_S)
        if failure:
            raise failure[0]

    def begin(self) -> None:
        """Open a transaction unless one is open; a producer that cannot (fenced while no
        transaction was open, say) is rebuilt first.

        Raises:
            KafkaException: the rebuilt producer cannot begin either.
            KafkaError: the rebuild was refused (see `_rebuild`).
        """
        if self.open:
            return
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            log.warning("begin_transaction failed (%s): rebuilding the transactional producer",
                        exc.args[0])  # fmt: skip
            self._rebuild(_error_of(exc))
            self.producer.begin_transaction()
        self.open = True

    def commit(self, offsets: list[TopicPartition], group_metadata: object) -> None:
        """Send `offsets` to the open transaction and commit it.

        Raises:
            KafkaException: a step failed or timed out; call `abort` with it (which rebuilds
                the producer when an abort is not possible).
        """
        if not self.open:
            return
        producer = self.producer
        if offsets:
            _bounded(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(
                    offsets, group_metadata, STEP_TIMEOUT_S
                ),
            )
        _bounded("commit_transaction", lambda: producer.commit_transaction(STEP_TIMEOUT_S))
        self.open = False
        self.commits += 1

    def abort_offsets(self, offsets: list[TopicPartition], group_metadata: object) -> None:
        """Send `offsets` to a transaction of their own and abort it.

        The abort marker it writes to the group's offsets partition ends every transactional
        offset commit this producer has pending there, not only these: the way to release
        offsets a broker left pending when it lost a commit's markers (a single broker that
        stops while answering a commit can), which otherwise keep the group's committed
        offsets unreadable (UNSTABLE_OFFSET_COMMIT) for good. Its inputs are redone.

        Raises:
            KafkaException: a step failed or timed out; call `abort` with it.
        """
        if self.open:
            raise RuntimeError("abort_offsets needs no transaction open")
        producer = self.producer
        producer.begin_transaction()
        self.open = True
        _bounded(
            "send_offsets_to_transaction",
            lambda: producer.send_offsets_to_transaction(offsets, group_metadata, STEP_TIMEOUT_S),
        )
        self.abort(None)

    def abort(self, cause: BaseException | None = None) -> None:
        """End the open transaction without making any of it visible: abort it, or, after a
        fatal error or a step that timed out, rebuild the producer (which aborts it).

        Raises:
            KafkaError: the rebuild was refused (see `_rebuild`).
            Stopping: the worker was asked to stop during the rebuild.
        """
        if not self.open and cause is None:
            return  # nothing begun, nothing to abort
        self.aborts += 1
        self.open = False
        error = _error_of(cause)
        if error is not None and (error.fatal() or error.retriable()):
            log.warning("transactional producer cannot abort after %s: rebuilding it", error)
            self._rebuild(error)
            return
        producer = self.producer
        try:
            _bounded("abort_transaction", lambda: producer.abort_transaction(STEP_TIMEOUT_S))
        except KafkaException as exc:
            log.warning("abort failed (%s): rebuilding the transactional producer", exc.args[0])
            self._rebuild(_error_of(exc))

    def close(self) -> None:
        """At shutdown: abort the open transaction within `CLOSE_ABORT_S`, never rebuilding
        the producer; one that cannot abort drops its outputs, and the coordinator aborts
        the transaction after ``transaction.timeout.ms``."""
        if not self.open:
            return
        self.aborts += 1
        self.open = False
        producer = self.producer
        try:
            _bounded("abort_transaction", lambda: producer.abort_transaction(CLOSE_ABORT_S),
                     timeout_s=CLOSE_ABORT_S)  # fmt: skip
        except KafkaException as exc:
            log.warning(
                "the transaction could not be aborted at shutdown (%s): the coordinator aborts "
                "it after transaction.timeout.ms; none of its outputs become visible",
                exc.args[0],
            )
            _drop_queue(producer)

    def _rebuild(self, cause: RdKafkaError | None) -> None:
        """Drop the producer and its unsent outputs; a new one with the same transactional.id
        fences it, and the coordinator aborts whatever transaction it left open.

        The old producer may have a fatal error, which every call on it raises again; it is
        only asked to drop its queue, and whatever it says is ignored.

        Raises:
            KafkaError: `cause` is a fencing within `FENCED_AGAIN_S` of the last one (another
                live producer has this transactional.id: a new one would fence it in turn),
                or transactions cannot be started again.
        """
        if cause is not None and cause.code() in _FENCED:
            self._refuse_twin()
        _drop_queue(self.producer)
        self.producer = self._new_producer(deadline_s=_INIT_DEADLINE_S)

    def _refuse_twin(self) -> None:
        """Note a fencing; raise if the last one was under `FENCED_AGAIN_S` ago."""
        now = time.monotonic()
        last, self._fenced_at = self._fenced_at, now
        if last is not None and now - last < FENCED_AGAIN_S:
            raise KafkaError(
                f"the transactional producer {self.transactional_id!r} was fenced twice within "
                f"{FENCED_AGAIN_S:.0f} s: another live worker uses the same transactional id, "
                "and each one's restart fences the other. Give every worker its own "
                "--transactional-id (or leave it unset: one per process), then start this one "
                "again; the other worker goes on"
            )


def _error_of(cause: BaseException | None) -> RdKafkaError | None:
    """The librdkafka error a KafkaException carries, if any."""
    error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
    return error if isinstance(error, RdKafkaError) else None


def _drop_queue(producer: Producer) -> None:
    """Drop what a producer being given up still holds; it may raise anything (a fatal
    error), which is ignored."""
    with contextlib.suppress(KafkaException, RuntimeError, SystemError):
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(0)


def _on_thread(
    name: str, step: Callable[[], object]
) -> tuple[threading.Thread, list[BaseException]]:
    """Start `step` on a daemon thread; the list receives what it raises, for the caller's
    thread to raise once the thread has ended."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, failure


def _bounded(name: str, step: Callable[[], object], *, timeout_s: float | None = None) -> None:
    """Run one transactional step on a helper thread; wait at most its timeout (by default
    `STEP_TIMEOUT_S`) and a margin.

    Raises:
        KafkaException: what the step raised, or ``_TIMED_OUT`` if it did not return in
            time (it keeps running on its thread, against a producer about to be replaced).
    """
    thread, failure = _on_thread(f"txn-{name}", step)
    timeout_s = STEP_TIMEOUT_S if timeout_s is None else timeout_s
    thread.join(timeout_s + _STEP_MARGIN_S)
    if thread.is_alive():
        log.warning("%s did not return within %.0f s: giving up on it", name,
                    timeout_s + _STEP_MARGIN_S)  # fmt: skip
        raise KafkaException(
            RdKafkaError(RdKafkaError._TIMED_OUT, f"{name} did not return in time", retriable=True)
        )
    if failure:
        raise failure[0]

"""The stream worker: consume, decode, micro-batch, infer, publish, and commit what is done.

The data path of one loop turn reads in one direction::

    records --consume--> values --EventDecoder--> row blocks + rejects
    row blocks --MicroBatcher--> batches --run_batch--> outputs
    outputs --encode_predictions--> predictions --produce--> delivery reports
    delivery reports --OffsetTracker--> committable offsets --commit--> the group

An input offset is committed only once the output it paid for (a prediction or a
dead-letter record) has been acknowledged by the broker: the tracker hands out the
highest contiguous finished offset per partition. A delivery that fails for good stops
the worker without committing past it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

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
from confluent_kafka.admin import AdminClient

from pipeline.config import WorkerConfig
from pipeline.engine.batching import Batch, MicroBatcher
from pipeline.engine.codec import EventDecoder, RowBlock, encode_predictions
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import KafkaError, ModelError
from pipeline.kafka.deadletter import dead_letter_headers
from pipeline.kafka.offsets import OffsetTracker, TopicPartitionKey
from pipeline.kafka.stats import Stats
from pipeline.kafka.topics import ensure_topics
from pipeline.kafka.transactions import Transactions, default_transactional_id

__all__ = ["ABANDONED", "KafkaClients", "Worker", "exit_if_abandoned", "run_worker"]

log = logging.getLogger("pipeline.worker")

_POLL_SIZE = 1000
_IDLE_POLL_S = 0.1
_MIN_POLL_S = 0.001
_SHUTDOWN_FLUSH_S = 6.0
_REVOKE_FLUSH_S = 10.0
_CLOSE_TIMEOUT_S = 10.0

# Consumers whose close() did not return (an unreachable coordinator can hold it without
# end). Kept referenced: freeing one would run librdkafka's destroy, which waits as well.
ABANDONED: list[Consumer] = []
# Errors that say the record itself is unacceptable (too large, malformed), raised by
# produce() or reported on delivery: a prediction becomes a dead letter (stage "produce"), a
# dead letter is written again without its value. Any other failure stops the worker
# (at-least-once) or aborts the transaction, never committing past the record.
_REJECTED_BY_BROKER = {
    RdKafkaError.MSG_SIZE_TOO_LARGE,
    RdKafkaError.INVALID_RECORD,
    RdKafkaError.INVALID_MSG,
}
_QUEUE_FULL_LIMIT_S = 60.0  # the producer's queue stays full this long: the broker is gone


@dataclass(frozen=True, slots=True)
class KafkaClients:
    """How the worker makes its Kafka clients from settings; tests pass stand-ins."""

    consumer: Callable[[dict[str, Any]], Consumer] = Consumer
    producer: Callable[[dict[str, Any]], Producer] = Producer
    admin: Callable[[dict[str, Any]], AdminClient] = AdminClient


@dataclass(slots=True)
class _Row:
    """One event on its way: its record, the partition assignment (generation) it was read
    in, and, once accepted, its id and event time."""

    msg: Message
    generation: int
    id: str
    ts: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _tp(msg: Message) -> TopicPartitionKey:
    return (msg.topic(), msg.partition())  # type: ignore[return-value]


class Worker:
    """One consumer-group member: its own consumer, producer, model sessions and batches."""

    def __init__(
        self, config: WorkerConfig, *, index: int = 0, clients: KafkaClients | None = None
    ) -> None:
        self.config = config
        self._index = index
        self._clients = clients or KafkaClients()
        if "debug" in config.kafka:  # -X debug=...: the user asked to see librdkafka's debug lines
            logging.getLogger("librdkafka").setLevel(logging.DEBUG)
        common: dict[str, Any] = {
            **config.kafka,
            "bootstrap.servers": config.bootstrap_servers,
            "logger": logging.getLogger("librdkafka"),  # one log format for everything
        }
        self._consumer = self._clients.consumer(
            {
                "group.id": config.group_id,
                "auto.offset.reset": config.offset_reset,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "queued.max.messages.kbytes": 16384,
                **common,
                "on_commit": self._on_commit,
            }
        )
        self._producer_settings: dict[str, Any] = {
            "enable.idempotence": True,
            "linger.ms": 2,
            "queue.buffering.max.messages": 200_000,
            **common,
        }
        self._txn: Transactions | None = None  # exactly-once: made in run(), once Kafka answers
        self._plain_producer: Producer | None = None
        if config.guarantee == "at-least-once":
            self._plain_producer = self._clients.producer(self._producer_settings)
        self._cache = ModelCache(
            ModelStore(config.models),
            max_loaded=config.max_loaded_models,
            intra_op_threads=config.model_threads,
        )
        self._decoder = EventDecoder(catalog=self._cache, default_model=config.default_model)
        self._batcher: MicroBatcher[_Row] = MicroBatcher(
            max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms
        )
        self._tracker = OffsetTracker()
        self._stats = Stats(interval_s=config.stats_interval_s)
        self._assigned: set[TopicPartitionKey] = set()
        self._paused: set[TopicPartitionKey] = set()
        # Exactly-once: inputs whose output the broker refused in an aborted transaction.
        self._refused: dict[tuple[TopicPartitionKey, int], RdKafkaError] = {}
        self._stopping = False
        self._fatal: KafkaError | None = None
        self._next_commit = time.monotonic()
        self._abort_pending = False

    @property
    def _producer(self) -> Producer:
        if self._txn is not None:
            return self._txn.producer  # rebuilt after fencing, so never cached
        assert self._plain_producer is not None
        return self._plain_producer

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to stop after the current turn (safe to call from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        """Run until stopped; return 0 after a clean shutdown.

        Raises:
            KafkaError: the broker cannot be reached, topics cannot be created, or a delivery
                failed for good (nothing past it was committed).
        """
        cfg = self.config
        ensure_topics(
            self._clients.admin({**cfg.kafka, "bootstrap.servers": cfg.bootstrap_servers}),
            cfg.bootstrap_servers,
            [*cfg.input_topics, cfg.output_topic, cfg.dlq_topic],
            create=cfg.create_topics,
            partitions=cfg.topic_partitions,
        )
        if cfg.guarantee == "exactly-once":
            txn_id = cfg.transactional_id or default_transactional_id(cfg.group_id, self._index)
            self._txn = Transactions(
                self._producer_settings,
                transactional_id=txn_id,
                make_producer=self._clients.producer,
            )
            log.info("exactly-once: transactional.id %s", txn_id)
        log.info("worker starting with %s", cfg.redacted)
        self._consumer.subscribe(
            list(cfg.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stopping and self._fatal is None:
                self._turn()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        if self._fatal is None:
            self._drain(self._batcher.flush(), _SHUTDOWN_FLUSH_S)
            self._commit(asynchronous=False)
        elif self._txn is not None:
            self._txn.abort()  # nothing of the open transaction becomes visible
        else:
            self._producer.flush(_SHUTDOWN_FLUSH_S)
            self._commit(asynchronous=False)  # only offsets whose outputs were acknowledged
        self._close_consumer()
        log.info("worker stopped: %s", self._stats.snapshot(0).line())
        if self._fatal is not None:
            raise self._fatal

    def _close_consumer(self) -> None:
        """Leave the group, waiting at most `_CLOSE_TIMEOUT_S`: with the broker gone,
        librdkafka's close can wait for the group coordinator indefinitely."""
        closer = threading.Thread(target=self._consumer.close, name="close", daemon=True)
        closer.start()
        closer.join(_CLOSE_TIMEOUT_S)
        if closer.is_alive():
            ABANDONED.append(self._consumer)
            log.warning(
                "the consumer did not close within %.0f s (is the broker reachable?): exiting "
                "without leaving the group; its partitions move once the session times out",
                _CLOSE_TIMEOUT_S,
            )

    # -- one turn of the loop --------------------------------------------------------------

    def _turn(self) -> None:
        msgs = self._consume()
        if msgs:
            self._ingest(msgs)
        for batch in self._batcher.due():
            self._infer(batch)
        self._producer.poll(0)
        now = time.monotonic()
        if now >= self._next_commit:
            self._commit(asynchronous=True)
            self._next_commit = now + self.config.commit_interval_ms / 1000
        self._backpressure()
        if self._stats.due():
            log.info("%s", self._stats.snapshot(len(self._assigned)).line())

    def _consume(self) -> list[Message]:
        """Wait for the first record (or the next batch deadline), then take what is queued."""
        deadline = self._batcher.next_deadline()
        timeout = _IDLE_POLL_S if deadline is None else deadline - time.monotonic()
        # librdkafka counts whole milliseconds: a timeout under 1 ms would be a non-blocking
        # poll, and the loop would spin. A due batch is cut by the caller right after.
        first = self._consumer.poll(min(max(timeout, _MIN_POLL_S), _IDLE_POLL_S))
        if first is None:
            return []
        return [first, *self._consumer.consume(_POLL_SIZE - 1, 0)]

    def _ingest(self, msgs: list[Message]) -> None:
        # Records of a partition revoked between poll() and consume() are not ours any more:
        # their new owner reads them from the committed offset.
        records = [m for m in msgs if self._usable(m) and _tp(m) in self._assigned]
        if not records:
            return
        generations = [self._tracker.consumed(_tp(m), m.offset()) for m in records]  # type: ignore[arg-type]
        self._stats.events_in += len(records)
        if self._refused:
            records, generations = self._redo_refused(records, generations)
        now = _now_ms()
        decoded = self._decoder.decode(
            [m.value() for m in records], [_timestamp(m, now) for m in records]
        )
        for reject in decoded.rejects:
            row = _Row(records[reject.index], generations[reject.index], "", 0)
            self._dead_letter(row, reject.stage, reject.error_type, reject.message)
        for key, block in decoded.blocks.items():
            rows = [
                _Row(records[i], generations[i], block.ids[n], block.ts[n])
                for n, i in enumerate(block.indices)
            ]
            for batch in self._batcher.add(key, block.features, rows):
                self._infer(batch)

    def _redo_refused(
        self, records: list[Message], generations: list[int]
    ) -> tuple[list[Message], list[int]]:
        """Dead-letter, without their values, the records whose outputs the broker refused
        in an aborted transaction; return the others."""
        kept: list[Message] = []
        kept_generations: list[int] = []
        for msg, generation in zip(records, generations, strict=True):
            err = self._refused.pop((_tp(msg), msg.offset()), None)  # type: ignore[arg-type]
            if err is None:
                kept.append(msg)
                kept_generations.append(generation)
                continue
            message = f"the broker refused an output of this event: {err}"
            row = _Row(msg, generation, "", 0)
            self._dead_letter(row, "produce", _camel(err.name()), message, omit=1)
        return kept, kept_generations

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.fatal():
            self._fatal = KafkaError(f"the consumer hit a fatal Kafka error: {err}")
        elif err.code() != RdKafkaError._PARTITION_EOF:
            log.warning("consumer error (librdkafka retries it): %s", err)
        return False

    # -- inference and publishing ----------------------------------------------------------

    def _infer(self, batch: Batch[_Row]) -> None:
        model, version = cast(tuple[str, str], batch.key)
        try:
            loaded = self._cache.get(model, version)
        except ModelError as exc:  # e.g. the version was deleted from the store meanwhile
            self._dead_letter_all(batch.items, "route", type(exc).__name__, str(exc))
            return
        result = run_batch(loaded, batch.features)
        self._stats.batch(len(batch.items))
        for failure in result.failures:
            row = batch.items[failure.position]
            self._dead_letter(row, "infer", failure.error_type, failure.message)
        if not result.ok_positions:
            return
        ok = [batch.items[p] for p in result.ok_positions]
        block = RowBlock(
            spec=loaded.spec,
            features=batch.features,
            indices=result.ok_positions,
            ids=[r.id for r in ok],
            ts=[r.ts for r in ok],
        )
        try:
            predictions = encode_predictions(block, result.outputs, _now_ms())
        except (ValueError, TypeError) as exc:  # outputs that do not fit the manifest or JSON
            self._dead_letter_all(ok, "infer", "OutputMismatch", str(exc))
            return
        topic = self.config.output_topic
        for row, value in zip(ok, predictions, strict=True):
            on_delivery = functools.partial(self._prediction_delivered, row)
            refused = self._produce(topic, value, row.msg.key(), None, on_delivery)
            if refused is not None:
                message = f"the producer refused the prediction: {refused}"
                self._dead_letter(row, "produce", _camel(refused.name()), message)

    def _dead_letter_all(self, rows: list[_Row], stage: str, error_type: str, message: str) -> None:
        for row in rows:
            self._dead_letter(row, stage, error_type, message)

    def _dead_letter(
        self, row: _Row, stage: str, error_type: str, message: str, *, omit: int = 0
    ) -> None:
        """Write `row`'s record to the DLQ with the error headers.

        `omit` 0 sends the original value and headers; 1 leaves the value out (it cannot be
        written, e.g. too large: `pipeline.value.omitted` says its size, and the source
        headers say where to read it back); 2 also leaves the original headers out.
        """
        msg = row.msg
        original, unreadable = _headers(msg)
        value = msg.value()
        extra: list[tuple[str, bytes | None]] = []
        if omit >= 1:
            extra.append(("pipeline.value.omitted", str(len(value or b"")).encode()))
            value = None
        if unreadable or (omit >= 2 and original):
            extra.append(("pipeline.headers.omitted", b"1"))
            original = None
        headers = dead_letter_headers(
            original,
            stage=stage,
            error_type=error_type,
            message=message,
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            failed_at_ms=_now_ms(),
        )
        on_delivery = functools.partial(
            self._dead_letter_delivered, row, (stage, error_type, message, omit)
        )
        refused = self._produce(self.config.dlq_topic, value, msg.key(), headers + extra,
                                on_delivery)  # fmt: skip
        if refused is not None:
            self._dead_letter_refused(row, (stage, error_type, message, omit), refused)

    def _dead_letter_refused(
        self, row: _Row, letter: tuple[str, str, str, int], error: RdKafkaError
    ) -> None:
        """A dead letter the producer or broker would not take: send it smaller, or stop."""
        stage, error_type, message, omit = letter
        if omit < 2:
            self._dead_letter(row, stage, error_type, message, omit=omit + 1)
        else:
            self._delivery_failed(row.msg, error)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, bytes | None]] | None,
        on_delivery: Callable[[Any, Message], None],
    ) -> RdKafkaError | None:
        """Hand one record to the producer.

        Returns:
            The error if the producer refused this record itself (too large, say); the
            caller writes it differently. None when it was queued, or when the producer
            failed as a whole (then the worker stops, or the transaction aborts).
        """
        full_since: float | None = None
        while True:
            try:
                if self._txn is not None:
                    self._txn.begin()
                self._producer.produce(
                    topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
                )
                return None
            except BufferError:  # the producer's queue is full: serve delivery reports first
                full_since = full_since or time.monotonic()
                if time.monotonic() - full_since > _QUEUE_FULL_LIMIT_S:
                    self._producer_failed(f"its queue stayed full for {_QUEUE_FULL_LIMIT_S:.0f} s")
                    return None
                self._producer.poll(0.05)
            except KafkaException as exc:
                error: RdKafkaError = exc.args[0]
                if error.code() in _REJECTED_BY_BROKER:
                    return error
                self._producer_failed(str(error))
                return None

    def _producer_failed(self, reason: str) -> None:
        """The producer cannot take records at all: abort (exactly-once) or stop."""
        if self._txn is not None:
            # A fenced or failed transactional producer: the commit step aborts (rebuilding
            # the producer) and redoes from the committed offsets.
            log.warning("produce failed in the transaction (%s): will abort", reason)
            self._abort_pending = True
            return
        if self._fatal is None:
            self._fatal = KafkaError(
                f"the producer refused outputs ({reason}); stopping without committing past "
                "them, so a restart redoes them. Check the broker and the output topics"
            )
        self._stopping = True

    def _prediction_delivered(self, row: _Row, err: RdKafkaError | None, _: Message) -> None:
        if err is None:
            self._stats.prediction(_now_ms() - row.ts)
            self._finished(row)
        elif err.code() in _REJECTED_BY_BROKER and self._txn is None:
            message = f"the broker refused the prediction: {err}"
            self._dead_letter(row, "produce", _camel(err.name()), message)
        else:
            self._delivery_failed(row.msg, err)

    def _dead_letter_delivered(
        self, row: _Row, letter: tuple[str, str, str, int], err: RdKafkaError | None, _: Message
    ) -> None:
        if err is None:
            self._stats.dead_letters += 1
            self._finished(row)
        elif err.code() in _REJECTED_BY_BROKER and self._txn is None:
            self._dead_letter_refused(row, letter, err)
        else:
            self._delivery_failed(row.msg, err)

    def _finished(self, row: _Row) -> None:
        tp = _tp(row.msg)
        self._tracker.finished(tp, row.msg.offset(), row.generation)  # type: ignore[arg-type]

    def _delivery_failed(self, msg: Message, err: RdKafkaError) -> None:
        if self._txn is not None:  # exactly-once: abort the transaction and redo it
            log.warning("output for %s[%s]@%s failed (%s): aborting the transaction",
                        msg.topic(), msg.partition(), msg.offset(), err)  # fmt: skip
            if err.code() in _REJECTED_BY_BROKER:
                # A refused record makes the transaction abortable; the redo writes this
                # input as a dead letter without its value, so it cannot be refused again.
                self._refused[(_tp(msg), msg.offset())] = err  # type: ignore[index]
            self._abort_pending = True
            return
        if self._fatal is None:
            self._fatal = KafkaError(
                f"the output for {msg.topic()}[{msg.partition()}]@{msg.offset()} was not delivered "
                f"({err}); stopping without committing past it, so a restart will redo it. "
                "Check the broker, or raise delivery.timeout.ms with -X"
            )
        self._stopping = True

    # -- offsets, rebalances, backpressure ------------------------------------------------

    def _commit(
        self, *, asynchronous: bool, only: Sequence[TopicPartitionKey] | None = None
    ) -> None:
        if self._txn is not None:
            self._commit_transaction(final=not asynchronous)
            return
        positions = self._tracker.commit_positions(only)
        if not positions:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                failed = [
                    p for p in self._consumer.commit(offsets=offsets, asynchronous=False) if p.error
                ]
                for p in failed:
                    log.warning("offset commit of %s[%d] failed: %s", p.topic, p.partition, p.error)
                    positions.pop((p.topic, p.partition), None)
        except KafkaException as exc:
            log.warning("offset commit failed (will retry): %s", exc.args[0])
            return
        self._tracker.mark_committed(positions)

    def _commit_transaction(self, *, final: bool) -> None:
        """Finish every pending batch, then commit outputs and offsets in one transaction.

        The offsets sent are those whose outputs were acknowledged, so every output in the
        transaction must be: committing with some still in flight would make them visible
        while their inputs stay uncommitted, to be redone (duplicated) later. Then the
        commit waits for the next turn; a `final` one (revoke, shutdown) aborts instead.
        """
        assert self._txn is not None
        if not self._txn.open and not self._abort_pending:
            return
        unacknowledged = self._drain(self._batcher.flush(), _REVOKE_FLUSH_S)
        if self._abort_pending:
            self._abort_and_rewind(None, "an output was not delivered")
            return
        if unacknowledged:
            if final:
                self._abort_and_rewind(None, f"{unacknowledged} outputs were not acknowledged")
            return
        positions = self._tracker.commit_positions()
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self._txn.commit(offsets, self._consumer.consumer_group_metadata())
        except KafkaException as exc:
            self._abort_and_rewind(exc)
            return
        self._tracker.mark_committed(positions)

    def _abort_and_rewind(self, cause: KafkaException | None, reason: object = None) -> None:
        """Abort the transaction and redo everything since the last committed offsets.

        A partition the group has no committed offset for yet rewinds to the first offset
        consumed in this assignment, not to the reset policy (which, for ``latest``, would
        skip what the aborted transaction consumed).
        """
        assert self._txn is not None
        reason = cause.args[0] if cause is not None else reason
        log.warning("transaction aborted (%s): rewinding to the committed offsets", reason)
        self._txn.abort(cause)
        self._abort_pending = False
        self._batcher.drop(lambda _: True)
        held = sorted(self._assigned)
        firsts = {tp: self._tracker.first_offset(tp) for tp in held}
        self._tracker.forget(held)
        if not held:
            return
        parts = [TopicPartition(t, p) for t, p in held]
        try:
            committed = self._consumer.committed(parts, timeout=30)
            unread = [tp for tp in committed if tp.error is not None]
            if unread:
                raise KafkaException(unread[0].error)
            for tp in committed:
                first = firsts.get((tp.topic, tp.partition))
                offset = tp.offset if tp.offset >= 0 else first
                if offset is None:
                    offset = (
                        OFFSET_BEGINNING if self.config.offset_reset == "earliest" else OFFSET_END
                    )
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            # Reading on from here would skip the aborted events; a restart redoes them.
            self._fatal = KafkaError(
                f"after an aborted transaction the committed offsets of {_names(parts)} could "
                f"not be read or sought to ({exc.args[0]}); stopping so a restart resumes from "
                "them. Check that the broker is reachable"
            )

    def _on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = partitions if err is not None else [p for p in partitions if p.error]
        if failed:
            log.warning("offset commit of %s failed (will retry): %s",
                        _names(failed), err or failed[0].error)  # fmt: skip
            # -1 is never a position: the next commit sends these partitions again.
            self._tracker.mark_committed({(p.topic, p.partition): -1 for p in failed})

    def _drain(self, batches: list[Batch[_Row]], timeout_s: float) -> int:
        """Infer `batches` and wait for every output to be acknowledged (or the timeout);
        return how many are not."""
        for batch in batches:
            self._infer(batch)
        remaining: int = self._producer.flush(timeout_s)
        if remaining:
            log.warning("%d outputs still unacknowledged after %.0f s", remaining, timeout_s)
        return remaining

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        if partitions:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: a
            # partition this worker paused before must not come back paused.
            self._consumer.resume(partitions)
        log.info("assigned %s", _names(partitions))

    def _on_revoke(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(p.topic, p.partition) for p in partitions]
        log.info("revoked %s: finishing their work and committing", _names(partitions))
        self._drain(self._batcher.flush(), _REVOKE_FLUSH_S)
        self._commit(asynchronous=False, only=revoked)
        self._forget(revoked)

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        dropped = self._batcher.drop(lambda row: _tp(row.msg) in lost)
        log.warning(
            "lost %s: dropped %d unfinished events, committing none", _names(partitions), dropped
        )
        self._forget(list(lost))
        if self._txn is not None and self._txn.open:  # its outputs may belong to lost partitions
            self._abort_and_rewind(None, "partitions were lost")

    def _forget(self, tps: list[TopicPartitionKey]) -> None:
        self._tracker.forget(tps)
        self._assigned -= set(tps)
        self._paused -= set(tps)

    def _backpressure(self) -> None:
        """Pause busy partitions while too many events are in flight; resume once drained.

        Every partition that has events in flight while the bound is exceeded is paused,
        including those that became busy after others were paused.
        """
        in_flight = len(self._tracker)
        if in_flight >= self.config.max_in_flight:
            busy = {tp for tp in self._assigned if self._tracker.in_flight(tp) > 0}
            newly = sorted(busy - self._paused)
            if newly:
                self._consumer.pause([TopicPartition(t, p) for t, p in newly])
                self._paused |= set(newly)
                log.info("paused %d partitions: %d events in flight", len(newly), in_flight)
        elif self._paused and in_flight <= self.config.max_in_flight // 2:
            self._consumer.resume([TopicPartition(t, p) for t, p in sorted(self._paused)])
            log.info("resumed %d partitions", len(self._paused))
            self._paused = set()


def _headers(msg: Message) -> tuple[list[tuple[str, bytes | None]] | None, bool]:
    """A record's headers, and whether they could not be read: confluent-kafka cannot
    decode a header name that is not UTF-8 (other clients can write one)."""
    try:
        return cast(list[tuple[str, bytes | None]] | None, msg.headers()), False
    except (SystemError, UnicodeError):
        return None, True


def _timestamp(msg: Message, now_ms: int) -> int:
    """The record's timestamp, or `now_ms` if it has none (librdkafka then gives -1)."""
    ts: int = msg.timestamp()[1]
    return ts if ts >= 0 else now_ms


def _camel(name: str) -> str:
    """librdkafka's MSG_SIZE_TOO_LARGE as the DLQ's error type MsgSizeTooLarge."""
    return "".join(part.capitalize() for part in name.strip("_").split("_")) or "KafkaError"


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


def exit_if_abandoned(code: int) -> None:
    """End the process now with `code` if a consumer's close never returned: the
    interpreter's own exit would free it and block in librdkafka's destroy."""
    if ABANDONED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_worker(config: WorkerConfig, index: int = 0) -> int:
    """Run one worker (the `index`-th of its parent) until SIGTERM or SIGINT; return 0."""
    worker = Worker(config, index=index)

    def _stop(signum: int, _: FrameType | None) -> None:
        log.info(
            "received %s: finishing batches in flight, then committing", signal.Signals(signum).name
        )
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return worker.run()

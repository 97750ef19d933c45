"""The stream worker: the Kafka adapter around the engine.

The data path of one loop turn reads in one direction::

    records --consume--> values --EventDecoder--> row blocks + rejects
    row blocks --Engine.submit--> batches --run_due--> outcomes
    outcomes --Outputs--> predictions and dead letters --produce--> acknowledgements
    acknowledgements --OffsetTracker--> committable offsets --Committer--> the group

An input offset is committed only once the output it paid for (a prediction or a
dead-letter record) has been acknowledged by the broker: the tracker hands out the highest
contiguous finished offset per partition. How offsets are committed (asynchronously to the
group, or inside a transaction) is the committer's business (`pipeline.kafka.committer`).

The worker runs the engine's batches on its own thread (`Engine.run_due`), unless the
engine is shared with front doors (`pipeline run --http-port`), where an `EngineLoop` may run
them too; outcomes reach the worker through a deque either way and are produced from its
thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import AdminClient

from pipeline.config import WorkerConfig
from pipeline.engine.codec import EventDecoder
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.spec import ModelSpec
from pipeline.errors import KafkaError
from pipeline.kafka.committer import (
    DRAIN_TIMEOUT_S,
    AtLeastOnceCommitter,
    Committer,
    TransactionalCommitter,
    names,
)
from pipeline.kafka.offsets import OffsetTracker, TopicPartitionKey
from pipeline.kafka.outputs import Outputs, camel, now_ms
from pipeline.kafka.topics import ensure_topics
from pipeline.kafka.transactions import Transactions, default_transactional_id
from pipeline.metrics import Sensor, Sensors
from pipeline.metrics.statsline import StatsLine

__all__ = ["ABANDONED", "KafkaClients", "Worker", "exit_if_abandoned", "run_worker"]

log = logging.getLogger("pipeline.worker")

_POLL_SIZE = 1000
_IDLE_POLL_S = 0.1
_MIN_POLL_S = 0.001
_CLOSE_TIMEOUT_S = 10.0

# Consumers whose close() did not return (an unreachable coordinator can hold it without
# end). Kept referenced: freeing one would run librdkafka's destroy, which waits as well.
ABANDONED: list[Consumer] = []


@dataclass(frozen=True, slots=True)
class KafkaClients:
    """How the worker makes its Kafka clients from settings; tests pass stand-ins."""

    consumer: Callable[[dict[str, Any]], Consumer] = Consumer
    producer: Callable[[dict[str, Any]], Producer] = Producer
    admin: Callable[[dict[str, Any]], AdminClient] = AdminClient


@dataclass(slots=True, eq=False)
class _Block:
    """The records of one decoded block on their way through the engine (its ticket).

    `epoch` is the worker's epoch when the block was submitted: while it is unchanged, no
    partition was lost and no transaction aborted since, so every record is still owed.
    """

    spec: ModelSpec
    records: list[Message]
    generations: list[int]
    ids: list[str]
    ts: list[int]
    epoch: int


class Worker:
    """One consumer-group member: its consumer, its committer and producer, and an engine.

    Args:
        config: The worker's settings.
        index: Its index under a ``--workers N`` parent (part of the transactional.id).
        clients: How Kafka clients are made (tests pass stand-ins).
        engine: An engine shared with front doors; by default the worker makes its own.
        stats: The stats line to log (shared with that engine); by default its own.
        sensors: Further readers of what the worker reports.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        index: int = 0,
        clients: KafkaClients | None = None,
        engine: Engine[Any] | None = None,
        stats: StatsLine | None = None,
        sensors: Sequence[Sensor] = (),
    ) -> None:
        self.config = config
        self._index = index
        self._clients = clients or KafkaClients()
        if "debug" in config.kafka:  # -X debug=...: the user asked to see librdkafka's debug lines
            logging.getLogger("librdkafka").setLevel(logging.DEBUG)
        self._stats = stats or StatsLine(interval_s=config.stats_interval_s)
        self._sensor = Sensors([self._stats, *sensors])
        self._common: dict[str, Any] = {
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
                **self._common,
                "on_commit": self._on_commit,
            }
        )
        self._shared_engine = engine is not None
        self._engine: Engine[Any] = engine or Engine(
            ModelCache(
                ModelStore(config.models),
                max_loaded=config.max_loaded_models,
                intra_op_threads=config.model_threads,
            ),
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            sensor=self._sensor,
        )
        self._decoder = EventDecoder(
            catalog=self._engine.models, default_model=config.default_model
        )
        self._tracker = OffsetTracker()
        self._committer: Committer | None = None  # made in run(), once Kafka answers
        self._outputs: Outputs | None = None
        self._outcomes: deque[Outcome[_Block]] = deque()
        self._in_engine = 0  # rows submitted to the engine and not yet come back
        self._epoch = 0
        self._assigned: set[TopicPartitionKey] = set()
        self._paused: set[TopicPartitionKey] = set()
        # Exactly-once: inputs whose output the broker refused in an aborted transaction.
        self._refused: dict[tuple[TopicPartitionKey, int], RdKafkaError] = {}
        self._stopping = False
        self._fatal: KafkaError | None = None

    # -- what the committer sees (committer.Host) ---------------------------------------------

    @property
    def consumer(self) -> Consumer:
        return self._consumer

    @property
    def tracker(self) -> OffsetTracker:
        return self._tracker

    def drain(self, timeout_s: float) -> int:
        """Run every waiting batch, produce its outputs and wait for their acknowledgement;
        return how many outputs are still unacknowledged."""
        self._engine.flush()
        self._produce_outcomes()
        remaining: int = self._producer.flush(timeout_s)
        if remaining:
            log.warning("%d outputs still unacknowledged after %.0f s", remaining, timeout_s)
        return remaining

    def discard_work(self) -> dict[TopicPartitionKey, int | None]:
        """Drop all work in flight and stop tracking the partitions held (an aborted
        transaction); return each one's first offset consumed in this assignment."""
        self._epoch += 1
        self._engine.drop(lambda ticket: isinstance(ticket, _Block))
        self._outcomes.clear()
        self._in_engine = 0
        held = sorted(self._assigned)
        firsts = {tp: self._tracker.first_offset(tp) for tp in held}
        self._tracker.forget(held)
        return firsts

    def remember_refused(self, msg: Message, error: RdKafkaError) -> None:
        self._refused[(_tp(msg), msg.offset())] = error  # type: ignore[index]

    def fail(self, error: KafkaError) -> None:
        if self._fatal is None:
            self._fatal = error
        self._stopping = True

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
        self._committer = self._make_committer()
        self._outputs = Outputs(
            self._committer,
            output_topic=cfg.output_topic,
            dlq_topic=cfg.dlq_topic,
            sensor=self._sensor,
            finish=self._finished,
        )
        log.info("worker starting with %s", cfg.redacted)
        self._consumer.subscribe(
            list(cfg.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stopping:
                self._turn()
        finally:
            self._shutdown()
        return 0

    def _make_committer(self) -> Committer:
        cfg = self.config
        producer_settings = {
            "enable.idempotence": True,
            "linger.ms": 2,
            "queue.buffering.max.messages": 200_000,
            **self._common,
        }
        if cfg.guarantee == "exactly-once":
            txn_id = cfg.transactional_id or default_transactional_id(cfg.group_id, self._index)
            transactions = Transactions(
                producer_settings, transactional_id=txn_id, make_producer=self._clients.producer
            )
            log.info("exactly-once: transactional.id %s", txn_id)
            return TransactionalCommitter(
                self,
                transactions,
                interval_ms=cfg.commit_interval_ms,
                offset_reset=cfg.offset_reset,
                sensor=self._sensor,
            )
        return AtLeastOnceCommitter(
            self,
            self._clients.producer(producer_settings),
            interval_ms=cfg.commit_interval_ms,
            every_events=cfg.commit_every_events,
        )

    @property
    def _producer(self) -> Producer:
        assert self._committer is not None
        return self._committer.producer

    def _shutdown(self) -> None:
        assert self._committer is not None
        if self._fatal is None:
            self.drain(DRAIN_TIMEOUT_S)
        self._committer.close(fatal=self._fatal is not None)
        self._close_consumer()
        log.info("worker stopped: %s", self._stats.snapshot().line())
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
        assert self._committer is not None
        msgs = self._consume()
        if msgs:
            self._ingest(msgs)
        self._engine.run_due()
        self._produce_outcomes()
        self._producer.poll(0)
        self._committer.tick(time.monotonic())
        self._backpressure()
        if self._stats.due():
            self._sensor.partitions(len(self._assigned), len(self._paused))
            log.info("%s", self._stats.snapshot().line())

    def _consume(self) -> list[Message]:
        """Wait for the first record (or the next batch deadline), then take what is queued."""
        deadline = self._engine.next_deadline()
        timeout = _IDLE_POLL_S if deadline is None else deadline - time.monotonic()
        if self._shared_engine and (self._in_engine or self._outcomes):
            timeout = _MIN_POLL_S  # the engine's own thread may hand back outcomes any time
        # librdkafka counts whole milliseconds: a timeout under 1 ms would be a non-blocking
        # poll, and the loop would spin. A due batch is run by the caller right after.
        first = self._consumer.poll(min(max(timeout, _MIN_POLL_S), _IDLE_POLL_S))
        if first is None:
            return []
        return [first, *self._consumer.consume(_POLL_SIZE - 1, 0)]

    def _ingest(self, msgs: list[Message]) -> None:
        """Decode records into row blocks, dead-letter the rejects, submit the blocks."""
        assert self._outputs is not None
        # Records of a partition revoked between poll() and consume() are not ours any more:
        # their new owner reads them from the committed offset.
        records = [m for m in msgs if self._usable(m) and _tp(m) in self._assigned]
        if not records:
            return
        generations = [self._tracker.consumed(_tp(m), m.offset()) for m in records]  # type: ignore[arg-type]
        for topic in {m.topic() for m in records}:
            self._sensor.records_consumed(str(topic), sum(1 for m in records if m.topic() == topic))
        if self._refused:
            records, generations = self._redo_refused(records, generations)
        now = now_ms()
        decoded = self._decoder.decode(
            [m.value() for m in records], [_timestamp(m, now) for m in records]
        )
        for reject in decoded.rejects:
            reason = (reject.stage, reject.error_type, reject.message)
            self._outputs.dead_letter(records[reject.index], generations[reject.index], reason)
        for (name, version), block in decoded.blocks.items():
            ticket = _Block(
                spec=block.spec,
                records=[records[i] for i in block.indices],
                generations=[generations[i] for i in block.indices],
                ids=block.ids,
                ts=block.ts,
                epoch=self._epoch,
            )
            self._in_engine += len(ticket.records)
            self._engine.submit(name, version, block.features, ticket, self._outcomes.append)

    def _redo_refused(
        self, records: list[Message], generations: list[int]
    ) -> tuple[list[Message], list[int]]:
        """Dead-letter, without their values, the records whose outputs the broker refused
        in an aborted transaction; return the others."""
        assert self._outputs is not None
        kept: list[Message] = []
        kept_generations: list[int] = []
        for msg, generation in zip(records, generations, strict=True):
            err = self._refused.pop((_tp(msg), msg.offset()), None)  # type: ignore[arg-type]
            if err is None:
                kept.append(msg)
                kept_generations.append(generation)
                continue
            reason = (
                "produce",
                camel(err.name()),
                f"the broker refused an output of this event: {err}",
            )
            self._outputs.dead_letter(msg, generation, reason, omit=1)
        return kept, kept_generations

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.fatal():
            self.fail(KafkaError(f"the consumer hit a fatal Kafka error: {err}"))
        elif err.code() != RdKafkaError._PARTITION_EOF:
            log.warning("consumer error (librdkafka retries it): %s", err)
        return False

    # -- outcomes, outputs, offsets -------------------------------------------------------

    def _produce_outcomes(self) -> None:
        """Produce the predictions and dead letters of the outcomes the engine handed back."""
        assert self._outputs is not None
        outputs = self._outputs
        while self._outcomes:
            outcome = self._outcomes.popleft()
            block = outcome.ticket
            self._in_engine -= len(outcome.rows) + len(outcome.errors)
            if block.epoch != self._epoch and not self._still_owed(block):
                continue
            for error in outcome.errors:
                reason = (error.stage, error.error_type, error.message)
                outputs.dead_letter(block.records[error.row], block.generations[error.row], reason)
            if not outcome.rows:
                continue
            rows = outcome.rows
            if isinstance(rows, range) and len(rows) == len(block.records):
                records, generations, ids, ts = (
                    block.records,
                    block.generations,
                    block.ids,
                    block.ts,
                )
            else:
                records = [block.records[r] for r in rows]
                generations = [block.generations[r] for r in rows]
                ids = [block.ids[r] for r in rows]
                ts = [block.ts[r] for r in rows]
            assert outcome.model is not None
            outputs.predictions(outcome.model.spec, records, generations, ids, ts, outcome.outputs)

    def _still_owed(self, block: _Block) -> bool:
        """After a loss or an abort: keep only the block's records of partitions still held
        in the same assignment (the others are someone else's, or will be redone)."""
        keep = [
            i for i, (m, g) in enumerate(zip(block.records, block.generations, strict=True))
            if self._tracker.generation(_tp(m)) == g
        ]  # fmt: skip
        if len(keep) == len(block.records):
            return True
        block.records = [block.records[i] for i in keep]
        block.generations = [block.generations[i] for i in keep]
        block.ids = [block.ids[i] for i in keep]
        block.ts = [block.ts[i] for i in keep]
        return bool(keep)

    def _finished(self, records: Sequence[Message], generations: Sequence[int]) -> None:
        """Outputs of `records` were acknowledged: their offsets may be committed."""
        assert self._committer is not None
        tracker = self._tracker
        for msg, generation in zip(records, generations, strict=True):
            tracker.finished(_tp(msg), msg.offset(), generation)  # type: ignore[arg-type]
        self._committer.finished(len(records))

    def _on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._committer is not None:
            self._committer.on_commit(err, partitions)

    # -- rebalances and backpressure ------------------------------------------------------

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        if partitions:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: a
            # partition this worker paused before must not come back paused.
            self._consumer.resume(partitions)
            self._sensor.rebalance("assigned", len(partitions))
        log.info("assigned %s", names(partitions))

    def _on_revoke(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._committer is not None
        revoked = [(p.topic, p.partition) for p in partitions]
        log.info("revoked %s: finishing their work and committing", names(partitions))
        self.drain(DRAIN_TIMEOUT_S)
        self._committer.revoked(revoked)
        self._forget(revoked)
        self._sensor.rebalance("revoked", len(partitions))

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._committer is not None
        lost = [(p.topic, p.partition) for p in partitions]
        log.warning("lost %s: dropping their unfinished events, committing none", names(partitions))
        self._epoch += 1  # outcomes of their records are dropped when they come back
        self._forget(lost)
        self._committer.lost()
        self._sensor.rebalance("lost", len(partitions))

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


def _tp(msg: Message) -> TopicPartitionKey:
    return (msg.topic(), msg.partition())  # type: ignore[return-value]


def _timestamp(msg: Message, now_ms: int) -> int:
    """The record's timestamp, or `now_ms` if it has none (librdkafka then gives -1)."""
    ts: int = msg.timestamp()[1]
    return ts if ts >= 0 else now_ms


def exit_if_abandoned(code: int) -> None:
    """End the process now with `code` if a consumer's close never returned: the
    interpreter's own exit would free it and block in librdkafka's destroy."""
    if ABANDONED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_worker(config: WorkerConfig, index: int = 0) -> int:
    """Run one worker (the `index`-th of its parent) until SIGTERM or SIGINT; return 0.

    With ``--http-port`` or ``--grpc-port`` the front doors answer requests from the
    worker's own engine, on a thread of their own, for as long as the worker runs.
    """
    if not (config.http_port or config.grpc_port):
        worker = Worker(config, index=index)
        _stop_on_signals(worker)
        return worker.run()
    from pipeline.engine.engine import EngineLoop
    from pipeline.serve.server import Doors, DoorsThread, build_engine, warm_up
    from pipeline.serve.state import Readiness

    stats = StatsLine(interval_s=config.stats_interval_s)
    engine = build_engine(config, Sensors([stats]), max_queue=config.max_queue)
    runner = EngineLoop(engine)
    runner.start()
    readiness = Readiness()
    warm_up(engine, config, readiness)
    doors = DoorsThread(
        Doors(config, engine, readiness, Sensors([stats]), default_model=config.default_model)
    )
    doors.start_and_wait()
    worker = Worker(config, index=index, engine=engine, stats=stats)
    _stop_on_signals(worker)
    try:
        return worker.run()
    finally:
        doors.stop()
        runner.stop()


def _stop_on_signals(worker: Worker) -> None:
    def _stop(signum: int, _: FrameType | None) -> None:
        log.info(
            "received %s: finishing batches in flight, then committing", signal.Signals(signum).name
        )
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

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

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import AdminClient

from pipeline.config import WorkerConfig
from pipeline.engine.codec import EventDecoder, encode_rows
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.enrich import Enrichment
from pipeline.engine.setup import build_engine, warm_up
from pipeline.engine.spec import ModelSpec
from pipeline.errors import KafkaError
from pipeline.kafka.clientlog import client_settings
from pipeline.kafka.committer import (
    DRAIN_TIMEOUT_S,
    AtLeastOnceCommitter,
    Committer,
    TransactionalCommitter,
    names,
)
from pipeline.kafka.enrich import TableFeed, TableWaits, defaulted_headers, load_tables
from pipeline.kafka.offsets import OffsetTracker, TopicPartitionKey
from pipeline.kafka.outputs import Outputs, Owed, camel, now_ms, usable_record
from pipeline.kafka.registryparts import registry_parts
from pipeline.kafka.shadowtopic import ShadowTopic, shadow_topic
from pipeline.kafka.share import ShareWorker
from pipeline.kafka.topics import ensure_topics, message_limit
from pipeline.kafka.transactions import Transactions, default_transactional_id
from pipeline.metrics import Sensor, Sensors
from pipeline.metrics.endpoint import MetricsServer
from pipeline.metrics.health import Readiness, Stall
from pipeline.metrics.prometheus import PrometheusSensor
from pipeline.metrics.statsline import StatsLine
from pipeline.metrics.tracing import batch_tracer
from pipeline.startup import early_stop

__all__ = ["ABANDONED", "KafkaClients", "Worker", "exit_if_abandoned", "run_worker"]

log = logging.getLogger("pipeline.worker")

_POLL_SIZE = 1000
_IDLE_POLL_S = 0.1
_MIN_POLL_S = 0.001
_CLOSE_TIMEOUT_S = 10.0
_STALE_AFTER_S = 60.0  # not live without a loop turn this long (revoke and commit steps: 10 s)
_LAG_INTERVAL_MS = 5000
_DEFAULT_BATCH_BYTES = 1_000_000  # librdkafka's batch.size

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
    """The records of one partition decoded for one model, on their way through the engine
    (its ticket): `owed` names the partition and its assignment's generation.

    `epoch` is the worker's epoch when the block was submitted: while it is unchanged, no
    partition was lost and no transaction aborted since, so every record is still owed.
    """

    spec: ModelSpec
    owed: Owed
    records: list[Message]
    offsets: list[int]
    ids: list[str]
    ts: list[int]
    epoch: int
    enriched_at: bytes | None = None  # the tables' position its rows were joined with
    defaulted: Mapping[int, bytes] | None = None  # offset -> tables whose defaults it took


class Worker:
    """One consumer-group member: its consumer, its committer and producer, and an engine.

    Args:
        config: The worker's settings.
        index: Its index under a ``--workers N`` parent (part of the transactional.id).
        clients: How Kafka clients are made (tests pass stand-ins).
        engine: An engine shared with front doors; by default the worker makes its own.
        stats: The stats line to log (shared with that engine); by default its own.
        sensors: Further readers of what the worker reports.
        readiness: What the probes report: not ready until a group assignment came, never
            again after a fatal error; live while the loop turns.
        lag_interval_ms: Read the consumer's lag from librdkafka's statistics this often
            (0: never), for the sensors' ``consumer_lag``.
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
        readiness: Readiness | None = None,
        lag_interval_ms: int = 0,
    ) -> None:
        self.config = config
        self._index = index
        self._clients = clients or KafkaClients()
        if "debug" in config.kafka:  # -X debug=...: the user asked to see librdkafka's debug lines
            logging.getLogger("librdkafka").setLevel(logging.DEBUG)
        self._stats = stats or StatsLine(interval_s=config.stats_interval_s)
        self._sensor = Sensors([self._stats, *sensors])
        self.readiness = readiness or Readiness(stale_after_s=_STALE_AFTER_S)
        self._deliveries = Stall("outputs", after_s=config.delivery_stall_s)
        self.readiness.watch(self._deliveries)
        statistics = {"statistics.interval.ms": lag_interval_ms, "stats_cb": self._on_stats}
        self._common = client_settings(config.bootstrap_servers, config.kafka)
        self._consumer = self._clients.consumer(
            {
                "group.id": config.group_id,
                "auto.offset.reset": config.offset_reset,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "partition.assignment.strategy": "cooperative-sticky",
                **fetch_settings(config.max_in_flight),
                **(statistics if lag_interval_ms else {}),
                **self._common,
                "on_commit": self._on_commit,
            }
        )
        self._shared_engine = engine is not None
        self._engine: Engine[Any] = engine or build_engine(
            config, self._sensor, max_queue=config.max_queue
        )
        registry = registry_parts(config, self._engine.models.get)
        self._feeds = [
            TableFeed(spec, self._common, self._clients.consumer, self._sensor,
                      config.enrich_max_bytes, framed=registry.tables)
            for spec in config.enrichments
        ]  # fmt: skip
        self._tables = TableWaits(self._feeds, self._sensor)
        self._decoder = EventDecoder(
            catalog=self._engine.models,
            default_model=config.default_model,
            value_format=config.value_format,
            framed=registry.events,
            enrichments=[Enrichment(feed.spec, feed.lookup) for feed in self._feeds],
            rollouts=self._engine.rollouts,
        )
        self._writer = registry.writer
        self._tracker = OffsetTracker()
        self._shadow_topic: ShadowTopic | None = None  # --shadow-topic, made in run()
        self._committer: Committer | None = None  # made in run(), once Kafka answers
        self._outputs: Outputs | None = None
        self._outcomes: deque[Outcome[_Block]] = deque()
        self._in_engine = 0  # rows submitted to the engine and not yet come back
        self._epoch = 0
        self._assigned: set[TopicPartitionKey] = set()
        self._paused: set[TopicPartitionKey] = set()
        # Exactly-once: inputs whose output the broker refused in an aborted transaction,
        # with the dead letter's omit level for the redo.
        self._refused: dict[tuple[TopicPartitionKey, int], tuple[RdKafkaError, int]] = {}
        self._stopping = False
        self._stop_at: float | None = None  # when stop() was first asked for
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
        try:
            remaining: int = self._producer.flush(timeout_s)
        except (KafkaException, SystemError) as exc:
            # A producer with a fatal error (a sequence the broker lost, say) raises from
            # flush; confluent-kafka can surface it as a SystemError from the log callback.
            assert self._committer is not None
            self._committer.producer_failed(f"waiting for acknowledgements failed: {exc}")
            return max(len(self._producer), 1)
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

    def remember_refused(self, msg: Message, error: RdKafkaError, omit: int) -> None:
        self._refused[((msg.topic(), msg.partition()), msg.offset())] = (error, omit)  # type: ignore[index]

    def fail(self, error: KafkaError) -> None:
        if self._fatal is None:
            self._fatal = error
            self.readiness.fatal(str(error))
        self._stopping = True

    def serve_group(self, timeout_s: float) -> None:
        held = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if held:
            self._consumer.pause(held)
        self._consumer.poll(timeout_s)  # serves the rebalance; a record it returns is dropped

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to stop after the current turn (safe to call from a signal handler)."""
        self._stop_at = self._stop_at or time.monotonic()
        self._stopping = True

    def run(self) -> int:
        """Run until stopped; return 0 after a clean shutdown.

        Raises:
            KafkaError: the broker cannot be reached, topics cannot be created, or a delivery
                failed for good (nothing past it was committed).
        """
        if self._stopping:  # stopped while connecting to a registry: nothing to undo
            self._close_consumer()
            self._close_feeds()
            log.info("worker stopped before joining its group")
            return 0
        cfg = self.config
        admin = self._clients.admin(dict(self._common))
        ensure_topics(
            admin,
            cfg.bootstrap_servers,
            [*cfg.input_topics, cfg.output_topic, cfg.dlq_topic],
            create=cfg.create_topics,
            partitions=cfg.topic_partitions,
            replication_factor=cfg.replication_factor,
            min_insync_replicas=cfg.min_insync_replicas,
        )
        self._committer = self._make_committer(
            message_limit(admin, [cfg.output_topic, cfg.dlq_topic])
        )
        self._outputs = Outputs(
            self._committer,
            output_topic=cfg.output_topic,
            dlq_topic=cfg.dlq_topic,
            sensor=self._sensor,
            finish=self._finished,
            tracer=batch_tracer(),
            encode=self._writer or encode_rows,
        )
        # A version the registry refuses is refused at start; a worker already told to
        # stop skips the registry, which may take seconds to answer.
        if self._writer is not None and not self._stopping:
            self._writer.prepare(self._engine.models.loaded())
        self._shadow_topic = shadow_topic(cfg, self._engine, self._common, _source, self._sensor)
        log.info("worker starting with %s", cfg.summary)
        self.readiness.wait_for("partitions", "waiting for the group to assign partitions")
        try:
            self._load_tables(admin)
        except BaseException:
            self._close_feeds()
            raise
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

    def _load_tables(self, admin: AdminClient) -> None:
        """Read every --enrich table to its end before joining the group."""
        load_tables(self._feeds, admin, self.readiness, lambda: self._stopping)

    def _close_feeds(self) -> None:
        for feed in self._feeds:
            feed.close()
        self._feeds = []

    def _make_committer(self, limit: int | None) -> Committer:
        """The committer of the configured guarantee, with its producer; `limit` is the
        output topics' smallest max.message.bytes (see `batch_settings`)."""
        cfg = self.config
        producer_settings = {
            **batch_settings(limit),
            # A deleted output or DLQ topic is not re-created by the broker's auto-creation
            # (its own partition count, not --topic-partitions): the output fails, the
            # worker stops, and its restart creates the topic as configured.
            "allow.auto.create.topics": False,
            "enable.idempotence": True,
            "linger.ms": 2,
            "queue.buffering.max.messages": 200_000,
            **self._common,
        }
        if cfg.guarantee == "exactly-once":
            txn_id = cfg.transactional_id or default_transactional_id(cfg.group_id, self._index)
            transactions = Transactions(
                producer_settings,
                transactional_id=txn_id,
                make_producer=self._clients.producer,
                stopping=lambda: self._stopping,
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
            # DRAIN_TIMEOUT_S from the stop request: a turn that was waiting for
            # acknowledgements when it came (the broker gone) used part of it already.
            waited = time.monotonic() - (self._stop_at or time.monotonic())
            self.drain(max(DRAIN_TIMEOUT_S - waited, 0.0))
        self._committer.close(fatal=self._fatal is not None)
        self._close_consumer()
        self._close_feeds()
        if self._shadow_topic is not None:
            self._shadow_topic.close()
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
        self.readiness.heartbeat()
        msgs = self._consume()
        if msgs:
            self._ingest(msgs)
        else:
            for feed in self._feeds:  # idle: apply the table updates already fetched
                feed.drain()
        self._engine.run_due()
        self._produce_outcomes()
        self._serve_deliveries()
        self._committer.tick(time.monotonic())
        self._backpressure()
        if self._stats.due():
            self._sensor.partitions(len(self._assigned), len(self._paused))
            log.info("%s", self._stats.snapshot().line())

    def _serve_deliveries(self) -> None:
        """Serve the producer's delivery reports. A producer with a fatal error (fenced, a
        sequence the broker lost) raises it here: the committer decides what that means."""
        assert self._committer is not None
        producer = self._producer
        owed = len(producer)
        try:
            producer.poll(0)
        except KafkaException as exc:
            self._committer.producer_failed(f"the producer failed: {exc.args[0]}")
        still = len(producer)
        self._deliveries.observe(still, progressed=still < owed)

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
        """Per partition: track the offsets, decode the records into row blocks, dead-letter
        the rejects, submit the blocks to the engine."""
        runs: dict[TopicPartitionKey, list[Message]] = {}
        for m in msgs:
            if m.error() is None or usable_record(m, "consumer", self.fail):
                tp = (m.topic(), m.partition())
                run = runs.get(tp)  # type: ignore[arg-type]
                if run is None:
                    runs[tp] = [m]  # type: ignore[index]
                else:
                    run.append(m)
        self._tables.begin()  # every table update acknowledged before these records
        now = now_ms()
        for tp, records in runs.items():
            # Records of a partition revoked between poll() and consume() are not ours any
            # more: their new owner reads them from the committed offset.
            if tp in self._assigned:
                self._ingest_run(tp, records, now)

    def _ingest_run(self, tp: TopicPartitionKey, records: list[Message], now: int) -> None:
        assert self._outputs is not None
        offsets: list[int] = [m.offset() for m in records]  # type: ignore[misc]
        owed = (tp, self._tracker.consumed_many(tp, offsets))
        self._sensor.records_consumed(tp[0], len(records))
        if self._refused:
            records, offsets = self._redo_refused(owed, records, offsets)
        values = [m.value() for m in records]
        timestamps = [_timestamp(m, now) for m in records]
        keys = [m.key() for m in records]
        decoded, at = self._tables.decode(lambda: self._decoder.decode(values, timestamps, keys))
        for reject in decoded.rejects:
            reason = (reject.stage, reject.error_type, reject.message)
            self._outputs.dead_letter(records[reject.index], owed, reason)
        defaulted = defaulted_headers(decoded.defaulted, offsets, self._sensor)
        for block in decoded.blocks.values():
            indices = block.indices
            whole = len(indices) == len(records)
            ticket = _Block(
                spec=block.spec,
                owed=owed,
                records=records if whole else [records[i] for i in indices],
                offsets=offsets if whole else [offsets[i] for i in indices],
                ids=block.ids,
                ts=block.ts,
                epoch=self._epoch,
                enriched_at=at,
                defaulted=defaulted,
            )
            self._in_engine += len(indices)
            self._engine.submit(
                block.spec.name, block.spec.version, block.feed, ticket, self._outcomes.append
            )

    def _redo_refused(
        self, owed: Owed, records: list[Message], offsets: list[int]
    ) -> tuple[list[Message], list[int]]:
        """Dead-letter, smaller than before (without their values first), the records whose
        outputs the broker refused in an aborted transaction; return the others."""
        assert self._outputs is not None
        tp = owed[0]
        kept: list[Message] = []
        kept_offsets: list[int] = []
        for msg, offset in zip(records, offsets, strict=True):
            refused = self._refused.pop((tp, offset), None)
            if refused is None:
                kept.append(msg)
                kept_offsets.append(offset)
                continue
            err, omit = refused
            message = f"the broker refused an output of this event: {err}"
            self._outputs.dead_letter(msg, owed, ("produce", camel(err.name()), message), omit=omit)
        return kept, kept_offsets

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
                outputs.dead_letter(block.records[error.row], block.owed, reason)
            if not outcome.rows:
                continue
            rows = outcome.rows
            if isinstance(rows, range) and len(rows) == len(block.records):
                records, offsets, ids, ts = block.records, block.offsets, block.ids, block.ts
            else:
                records = [block.records[r] for r in rows]
                offsets = [block.offsets[r] for r in rows]
                ids = [block.ids[r] for r in rows]
                ts = [block.ts[r] for r in rows]
            assert outcome.model is not None
            outputs.predictions(outcome.model.spec, block.owed, records, offsets, ids, ts,
                                outcome.outputs, enriched_at=block.enriched_at,
                                defaulted=block.defaulted)  # fmt: skip

    def _still_owed(self, block: _Block) -> bool:
        """After a loss or an abort: whether the block's partition is still held in the same
        assignment (otherwise its records are someone else's, or will be redone)."""
        return self._tracker.holds(block.owed)

    def _finished(self, owed: Owed, offsets: Sequence[int]) -> None:
        """Outputs for `offsets` were acknowledged: they may be committed."""
        assert self._committer is not None
        tp, generation = owed
        self._tracker.finished_many(tp, offsets, generation)
        self._committer.finished(len(offsets))

    def _on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._committer is not None:
            self._committer.on_commit(err, partitions)

    def _on_stats(self, statistics: str) -> None:
        """librdkafka's statistics (JSON): the consumer lag of each partition held.

        librdkafka's own figure counts from the offsets the consumer committed; an
        exactly-once worker commits in transactions, which it never sees (-1). Then the lag
        counts from the position this worker finished (its next transaction commits it)."""
        try:
            topics = json.loads(statistics).get("topics", {})
        except ValueError:
            return
        for topic, info in topics.items():
            for partition, figures in info.get("partitions", {}).items():
                tp = (topic, int(partition))
                if tp not in self._assigned:
                    continue
                lag = figures.get("consumer_lag", -1)
                if lag < 0:
                    lag = _lag_from(figures, self._tracker.position(tp))
                if lag >= 0:
                    self._sensor.consumer_lag(topic, int(partition), lag)

    # -- rebalances and backpressure ------------------------------------------------------

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self.readiness.done("partitions")  # the group settled, even with nothing for us
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        if partitions:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: a
            # partition this worker paused before must not come back paused.
            self._consumer.resume(partitions)
            self._sensor.rebalance("assigned", len(partitions))
            log.info("assigned %s", names(partitions))
        else:  # cooperative rebalancing hands over only what changed
            held = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
            log.info("assigned nothing new, holding %s", names(held))

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
        for topic, partition in tps:  # no longer ours: its lag is another member's to report
            self._sensor.consumer_lag(topic, partition, -1)

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


def _lag_from(figures: dict[str, Any], finished: int | None) -> int:
    """A partition's lag from its statistics' end (the last stable offset, which is what a
    read_committed consumer can read) to `finished`, else to the offset committed when it
    was assigned; -1 when neither is known."""
    end = int(figures.get("ls_offset", -1))
    if end < 0:
        end = int(figures.get("hi_offset", -1))
    start = finished if finished is not None else int(figures.get("committed_offset", -1))
    if end < 0 or start < 0:
        return -1
    return max(end - start, 0)


def fetch_settings(max_in_flight: int) -> dict[str, int]:
    """librdkafka's prefetch queue, sized from the worker's own bound on events in flight.

    The queue holds records fetched but not yet consumed; the worker bounds memory itself
    by pausing busy partitions past ``max_in_flight``. librdkafka's default of a 16 MB
    queue throttled 680-byte events at about 20 MB/s: once full it postponed fetching for
    ``fetch.queue.backoff.ms`` (1 s by default). So the queue holds about twice the events
    the worker may have in flight, at 2 KiB each (16 to 128 MiB), and a full queue is checked
    again after 10 ms. ``-X`` overrides both.
    """
    kbytes = min(max(2 * max_in_flight * 2, 16 * 1024), 128 * 1024)
    return {"queued.max.messages.kbytes": kbytes, "fetch.queue.backoff.ms": 10}


def batch_settings(limit: int | None) -> dict[str, int]:
    """The producer's batch size, within the output topics' max.message.bytes (`limit`).

    The broker refuses a record batch larger than the topic's max.message.bytes as a whole,
    and reports every record in it as too large (MSG_SIZE_TOO_LARGE): with librdkafka's
    1,000,000-byte batches a topic limited to 64 KiB saw valid events dead-lettered by the
    thousand. Batches no larger than the limit are refused only for a record that is
    itself too large. ``-X batch.size`` overrides it.
    """
    if limit is None or limit >= _DEFAULT_BATCH_BYTES:
        return {}
    return {"batch.size": max(limit, 1)}


def _source(ticket: object, row: int) -> tuple[str, int, int, str, int, bytes | None] | None:
    """Where row `row` of a block came from, for --shadow-topic (None: a door's request)."""
    if not isinstance(ticket, _Block):
        return None
    (topic, partition), _ = ticket.owed
    key: bytes | None = ticket.records[row].key()
    return topic, partition, ticket.offsets[row], ticket.ids[row], ticket.ts[row], key


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

    With ``--metrics-port`` (plus `index`, under ``--workers``) it serves /metrics and the
    probes; with ``--http-port`` or ``--grpc-port`` the front doors answer requests from
    the worker's own engine, on a thread of their own, for as long as the worker runs.
    """
    stats = StatsLine(interval_s=config.stats_interval_s, kind=config.group_type)
    wants_metrics = bool(config.metrics_port or config.http_port)
    metrics = PrometheusSensor() if wants_metrics else None
    sensor = Sensors([stats, *([metrics] if metrics else [])])
    readiness = Readiness(stale_after_s=_STALE_AFTER_S)
    # Held back from the start, not from the worker's run: the endpoint and the doors open
    # before it, and /readyz must not answer 200 in between.
    readiness.wait_for("partitions", "waiting for the group to assign partitions")
    engine = build_engine(config, sensor, max_queue=config.max_queue)
    readiness.wait_for("models", "the models are loading")
    warm_up(engine, default_model=config.default_model, max_loaded=config.max_loaded_models)
    readiness.done("models")
    with contextlib.ExitStack() as stack:
        if metrics is not None and config.metrics_port:
            endpoint = MetricsServer(
                config.metrics_host, config.metrics_port + index, metrics, readiness
            )
            endpoint.start()
            stack.callback(endpoint.stop)
        if config.http_port or config.grpc_port:
            stack.enter_context(_doors(config, engine, readiness, sensor, metrics))
        if _stopped_while_starting():  # before the worker asks Kafka or a registry anything
            return 0
        extra = [metrics] if metrics else []
        worker: Worker | ShareWorker
        if config.group_type == "share":
            worker = ShareWorker(config, engine=engine, stats=stats, sensors=extra,
                                 readiness=readiness)  # fmt: skip
        else:
            worker = Worker(
                config, index=index, engine=engine, stats=stats, sensors=extra,
                readiness=readiness, lag_interval_ms=_LAG_INTERVAL_MS if metrics else 0,
            )  # fmt: skip
        _stop_on_signals(worker)
        if _stopped_while_starting():  # it came while the worker connected
            worker.stop()
        return worker.run()


def _stopped_while_starting() -> bool:
    """Whether a SIGTERM or SIGINT came while the command started (logged if so)."""
    if early := early_stop():
        log.info("received %s while starting: stopping", early.name)
    return early is not None


@contextlib.contextmanager
def _doors(
    config: WorkerConfig,
    engine: Engine[Any],
    readiness: Readiness,
    sensor: Sensor,
    metrics: PrometheusSensor | None,
) -> Iterator[None]:
    """The front doors beside the worker, and an engine thread for their batches."""
    from pipeline.engine.engine import EngineLoop
    from pipeline.serve.server import Doors, DoorsThread

    runner = EngineLoop(engine)
    runner.start()
    doors = DoorsThread(Doors(config, engine, readiness, sensor,
                              default_model=config.default_model, metrics=metrics))  # fmt: skip
    doors.start_and_wait()
    try:
        yield
    finally:
        doors.stop()
        runner.stop()


def _stop_on_signals(worker: Worker | ShareWorker) -> None:
    def _stop(signum: int, _: FrameType | None) -> None:
        log.info(
            "received %s: finishing batches in flight, then committing", signal.Signals(signum).name
        )
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

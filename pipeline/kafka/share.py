"""`pipeline run --group-type share`: the worker as a member of a share group (KIP-932).

In a share group the broker hands the records of one partition to many consumers, each
record *acquired* by one of them for a while (the group's ``share.record.lock.duration.ms``)
and acknowledged on its own: accepted, released for redelivery, or rejected. So more
workers than partitions can share a topic, at the price of order within a partition.

Each poll's records are finished before the next poll (librdkafka's explicit mode requires
it, and it bounds memory to one poll): decoded, run through the engine, their predictions
or dead letters produced and acknowledged by the broker; then each record is *accepted* if
its output was acknowledged, *released* if its output failed (another worker, or this one,
gets it again). A record acquired more than ``--max-delivery-attempts`` times (it keeps
coming back: its worker crashed or its outputs kept failing) goes straight to the
dead-letter topic (stage ``deliver``, with ``pipeline.delivery.count``) and is accepted, so
a poison record cannot loop. That delivery is the last the broker makes: the worker sets the
group's ``share.delivery.count.limit`` to ``--max-delivery-attempts`` + 1
(`pipeline.kafka.sharegroup`), since past it the broker archives a record unseen. If even
the dead letter cannot be written, the record is *rejected* (the broker archives it; it
stays readable in the input topic) and logged.

The guarantee is at-least-once: a record whose worker dies after producing its output but
before acknowledging it is delivered again. ``--offset-reset`` sets the group's
``share.auto.offset.reset``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from confluent_kafka import (
    AcknowledgeType,
    Consumer,
    Message,
    Producer,
    ShareConsumer,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import AdminClient

from pipeline.config import WorkerConfig
from pipeline.engine.codec import EventDecoder, encode_rows
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.enrich import Enrichment
from pipeline.errors import KafkaError
from pipeline.kafka.clientlog import client_settings
from pipeline.kafka.enrich import TableFeed, TableWaits, defaulted_headers, load_tables
from pipeline.kafka.outputs import Outputs, Owed, now_ms, usable_record
from pipeline.kafka.registryparts import registry_parts
from pipeline.kafka.shadowtopic import shadow_topic
from pipeline.kafka.sharegroup import agree_delivery_limit, set_offset_reset
from pipeline.kafka.topics import ensure_topics
from pipeline.metrics import Sensor, Sensors
from pipeline.metrics.health import Readiness, Stall
from pipeline.metrics.statsline import StatsLine

__all__ = ["ShareWorker"]

log = logging.getLogger("pipeline.worker")
_POLL_S = 0.1
_ACK_TYPES = {
    "accepted": AcknowledgeType.ACCEPT,
    "released": AcknowledgeType.RELEASE,
    "rejected": AcknowledgeType.REJECT,
}
_DRAIN_TIMEOUT_S = 30.0


class _Acks:
    """The acknowledgements one poll owes: accept what was finished, release what failed."""

    def __init__(self, records: Sequence[Message]) -> None:
        self.records = {(m.topic(), m.partition(), m.offset()): m for m in records}
        self.accepted: set[tuple[Any, ...]] = set()
        self.released: set[tuple[Any, ...]] = set()
        self.rejected: set[tuple[Any, ...]] = set()

    def finished(self, owed: Owed, offsets: Sequence[int]) -> None:
        (topic, partition), _ = owed
        self.accepted.update((topic, partition, o) for o in offsets)

    def failed(self, msg: Message, *, give_up: bool) -> None:
        key = (msg.topic(), msg.partition(), msg.offset())
        (self.rejected if give_up else self.released).add(key)

    def kind(self, key: tuple[Any, ...]) -> str:
        """How to acknowledge the record of `key`."""
        if key in self.rejected:
            return "rejected"
        if key in self.released or key not in self.accepted:
            return "released"
        return "accepted"


class _ShareCommitter:
    """The `Committer` a share worker gives `Outputs`: outputs go through a plain
    idempotent producer; a failed one releases its record instead of stopping anything."""

    dead_letters_for_refused = True

    def __init__(self, worker: ShareWorker, producer: Producer) -> None:
        self._worker = worker
        self._producer = producer

    @property
    def producer(self) -> Producer:
        return self._producer

    def begin(self) -> None:
        pass

    def finished(self, n: int) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        pass

    def lost(self) -> None:
        pass

    def on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        pass

    def output_failed(
        self, msg: Message, err: RdKafkaError, owed: Owed, *, next_omit: int = 1, to: str = ""
    ) -> None:
        self._worker.release(msg, err)

    def producer_failed(self, reason: str) -> None:
        self._worker.fail(
            KafkaError(
                f"the producer refused outputs ({reason}); stopping, and "
                "the records this worker holds return to the group"
            )
        )

    def close(self, *, fatal: bool) -> None:
        self._producer.flush(_DRAIN_TIMEOUT_S)


class _Ticket(NamedTuple):
    """What a block's outcome needs to be produced: where its records came from, their
    ids and times, and the tables' position they were joined with."""

    owed: Owed
    records: list[Message]
    offsets: list[int]
    ids: list[str]
    ts: list[int]
    enriched_at: bytes | None
    defaulted: dict[int, bytes] | None  # offset -> tables whose defaults the row took


def _close_feeds(feeds: Sequence[TableFeed]) -> None:
    for feed in feeds:
        feed.close()


class ShareWorker:
    """One share-group member: a share consumer, a producer, and an engine.

    Args:
        config: The worker's settings (``group_type`` share).
        engine: The engine (shared with front doors, or the worker's own).
        stats: The stats line to log.
        sensors: Further readers of what the worker reports.
        readiness: What the probes report.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        engine: Engine[Any],
        stats: StatsLine,
        sensors: Sequence[Sensor] = (),
        readiness: Readiness | None = None,
    ) -> None:
        self.config = config
        self._engine = engine
        self._stats = stats
        self._sensor = Sensors([stats, *sensors])
        self.readiness = readiness or Readiness()
        self._deliveries = Stall("outputs", after_s=config.delivery_stall_s)
        self.readiness.watch(self._deliveries)
        self._common = client_settings(config.bootstrap_servers, config.kafka)
        registry = registry_parts(config, engine.models.get)
        self._feeds = [
            TableFeed(
                spec,
                self._common,
                Consumer,
                self._sensor,
                config.enrich_max_bytes,
                framed=registry.tables,
            )
            for spec in config.enrichments
        ]
        self._tables = TableWaits(self._feeds, self._sensor)
        self._decoder = EventDecoder(
            catalog=engine.models,
            default_model=config.default_model,
            value_format=config.value_format,
            framed=registry.events,
            enrichments=[Enrichment(feed.spec, feed.lookup) for feed in self._feeds],
            rollouts=engine.rollouts,
        )
        self._writer = registry.writer
        self._outcomes: list[Outcome[_Ticket]] = []
        self._acks: _Acks | None = None
        self._stopping = False
        self._fatal: KafkaError | None = None
        # The last delivery the broker makes (agreed with the group in run()).
        self._last_delivery = config.max_delivery_attempts + 1

    def stop(self, *_: object) -> None:
        """Stop after the current poll's records are finished."""
        self._stopping = True

    def fail(self, error: KafkaError) -> None:
        if self._fatal is None:
            self._fatal = error
            self.readiness.fatal(str(error))
        self._stopping = True

    def release(self, msg: Message, err: RdKafkaError) -> None:
        """An output of `msg` failed: release it for redelivery, or, once it was acquired
        more than ``max_delivery_attempts`` times (its dead letter failed too), reject it:
        the broker archives it and it stays readable in the input topic."""
        if self._acks is None:
            return
        count = msg.delivery_count() or 1
        give_up = count >= self._last_delivery
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        if give_up:
            log.error(
                "output for %s failed (%s) on delivery %d, and so did its dead letter: "
                "rejecting it; read it back from the input topic",
                where,
                err,
                count,
            )
        else:
            log.warning("output for %s failed (%s): releasing it for redelivery", where, err)
        self._acks.failed(msg, give_up=give_up)

    def run(self) -> int:
        """Run until stopped; return 0 after a clean shutdown.

        Raises:
            KafkaError: the broker cannot be reached or refuses the share group.
        """
        if self._stopping:  # stopped while connecting to a registry: nothing to undo
            _close_feeds(self._feeds)
            log.info("worker stopped before joining its share group")
            return 0
        cfg = self.config
        admin = AdminClient(dict(self._common))
        ensure_topics(
            admin,
            cfg.bootstrap_servers,
            [*cfg.input_topics, cfg.output_topic, cfg.dlq_topic],
            create=cfg.create_topics,
            partitions=cfg.topic_partitions,
            replication_factor=cfg.replication_factor,
            min_insync_replicas=cfg.min_insync_replicas,
        )
        set_offset_reset(admin, cfg.group_id, cfg.offset_reset)
        try:
            load_tables(self._feeds, admin, self.readiness, lambda: self._stopping)
        except BaseException:
            _close_feeds(self._feeds)
            raise
        self._last_delivery = agree_delivery_limit(admin, cfg.group_id, cfg.max_delivery_attempts)
        producer = Producer({"enable.idempotence": True, "linger.ms": 2, **self._common})
        committer = _ShareCommitter(self, producer)
        outputs = Outputs(
            committer,
            output_topic=cfg.output_topic,
            dlq_topic=cfg.dlq_topic,
            sensor=self._sensor,
            finish=self._finished,
            encode=self._writer or encode_rows,
        )
        if self._writer is not None and not self._stopping:  # a refused version fails here
            self._writer.prepare(self._engine.models.loaded())
        shadows = shadow_topic(cfg, self._engine, self._common, _source, self._sensor)
        consumer = ShareConsumer(
            {
                "group.id": cfg.group_id,
                "share.acknowledgement.mode": "explicit",
                # A member acquires at most this many records at a time, so the records a
                # partition may have locked at once (the group's share.partition.max.record
                # .locks, 2000 by default) spread over many members instead of one.
                "max.poll.records": cfg.max_batch_size,
                **self._common,
            }
        )
        log.info("share-group worker starting with %s", cfg.summary)
        consumer.subscribe(list(cfg.input_topics))
        self.readiness.done("partitions")
        try:
            while not self._stopping:
                self.readiness.heartbeat()
                self._turn(consumer, outputs, producer)
        finally:
            committer.close(fatal=self._fatal is not None)
            _close(consumer)
            _close_feeds(self._feeds)
            if shadows is not None:
                shadows.close()
            log.info("worker stopped: %s", self._stats.snapshot().line())
        if self._fatal is not None:
            raise self._fatal
        return 0

    def _turn(self, consumer: ShareConsumer, outputs: Outputs, producer: Producer) -> None:
        polled = consumer.poll(_POLL_S)
        records = [m for m in polled if usable_record(m, "share consumer", self.fail)]
        if records:
            self._acks = acks = _Acks(records)
            self._process(records, outputs)
            owed = len(producer)
            unacknowledged = producer.flush(_DRAIN_TIMEOUT_S)
            self._deliveries.observe(unacknowledged, progressed=unacknowledged < owed)
            self._acknowledge(consumer, acks, unacknowledged)
            self._acks = None
        else:  # outputs a timed-out flush left behind stay owed until delivered
            owed = len(producer)
            producer.poll(0)
            self._deliveries.observe(len(producer), progressed=len(producer) < owed)
        if self._stats.due():
            log.info("%s", self._stats.snapshot().line())

    def _process(self, records: list[Message], outputs: Outputs) -> None:
        """Dead-letter the records delivered too often, decode and run the rest."""
        runs: dict[tuple[str, int], list[Message]] = {}
        for m in records:
            runs.setdefault((m.topic(), m.partition()), []).append(m)  # type: ignore[arg-type]
        now = now_ms()
        self._tables.begin()  # every table update acknowledged before these records
        for tp, run in runs.items():
            owed = (tp, 0)
            self._sensor.records_consumed(tp[0], len(run))
            fresh = []
            for m in run:
                count = m.delivery_count() or 1
                if count >= self._last_delivery:
                    message = (
                        f"acquired {count} times (more than --max-delivery-attempts "
                        f"{self.config.max_delivery_attempts}, and the group's last "
                        "delivery): its outputs never landed"
                    )
                    outputs.dead_letter(
                        m,
                        owed,
                        ("deliver", "TooManyDeliveries", message),
                        extra=[("pipeline.delivery.count", str(count).encode())],
                    )
                else:
                    fresh.append(m)
            self._decode(owed, fresh, outputs, now)
        self._engine.flush()
        for outcome in self._outcomes:
            self._produce(outcome, outputs)
        self._outcomes.clear()

    def _decode(self, owed: Owed, records: list[Message], outputs: Outputs, now: int) -> None:
        if not records:
            return
        offsets: list[int] = [m.offset() for m in records]  # type: ignore[misc]
        values = [m.value() for m in records]
        timestamps = [ts if (ts := m.timestamp()[1]) >= 0 else now for m in records]
        keys = [m.key() for m in records]
        decoded, at = self._tables.decode(lambda: self._decoder.decode(values, timestamps, keys))
        for reject in decoded.rejects:
            reason = (reject.stage, reject.error_type, reject.message)
            outputs.dead_letter(records[reject.index], owed, reason)
        defaulted = defaulted_headers(decoded.defaulted, offsets, self._sensor)
        for block in decoded.blocks.values():
            ticket = _Ticket(
                owed,
                [records[i] for i in block.indices],
                [offsets[i] for i in block.indices],
                block.ids,
                block.ts,
                at,
                defaulted,
            )
            self._engine.submit(
                block.spec.name, block.spec.version, block.feed, ticket, self._outcomes.append
            )

    def _produce(self, outcome: Outcome[_Ticket], outputs: Outputs) -> None:
        owed, records, offsets, ids, ts, at, defaulted = outcome.ticket
        for error in outcome.errors:
            outputs.dead_letter(
                records[error.row], owed, (error.stage, error.error_type, error.message)
            )
        if outcome.rows:
            rows = list(outcome.rows)
            assert outcome.model is not None
            outputs.predictions(
                outcome.model.spec,
                owed,
                [records[r] for r in rows],
                [offsets[r] for r in rows],
                [ids[r] for r in rows],
                [ts[r] for r in rows],
                outcome.outputs,
                enriched_at=at,
                defaulted=defaulted,
            )

    def _acknowledge(self, consumer: ShareConsumer, acks: _Acks, unacknowledged: int) -> None:
        """Acknowledge each record with the kind decided; send the acknowledgements now."""
        counts = dict.fromkeys(_ACK_TYPES, 0)
        for key, msg in acks.records.items():
            kind = acks.kind(key)
            consumer.acknowledge(msg, _ACK_TYPES[kind])
            counts[kind] += 1
        if unacknowledged:
            log.warning(
                "%d outputs unacknowledged after %.0f s: their records are released",
                unacknowledged,
                _DRAIN_TIMEOUT_S,
            )
        consumer.commit_async()
        for kind, n in counts.items():
            if n:
                self._sensor.records_acknowledged(kind, n)

    def _finished(self, owed: Owed, offsets: Sequence[int]) -> None:
        if self._acks is not None:
            self._acks.finished(owed, offsets)


def _source(ticket: object, row: int) -> tuple[str, int, int, str, int, bytes | None] | None:
    """Where row `row` of a submission came from, for --shadow-topic (None: a door's)."""
    if not (isinstance(ticket, tuple) and len(ticket) == 5):
        return None
    ((topic, partition), _), records, offsets, ids, ts = ticket
    key: bytes | None = records[row].key()
    return topic, partition, offsets[row], ids[row], ts[row], key


def _close(consumer: ShareConsumer) -> None:
    started = time.monotonic()
    try:
        consumer.close()
    except Exception as exc:  # a closing share consumer with the broker gone
        log.warning(
            "the share consumer did not close cleanly after %.1f s: %s",
            time.monotonic() - started,
            exc,
        )

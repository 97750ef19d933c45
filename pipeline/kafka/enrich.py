"""Enrichment tables fed from compacted topics: the Kafka side of `pipeline.engine.enrich`.

Each ``--enrich NAME=TOPIC:KEY_FIELD`` has a `TableFeed`: a consumer with no group of its
own (every partition of the table topic assigned, read from the beginning, no offset ever
committed), so every worker process keeps the whole table, whatever input partitions the
group gives it, and a rebalance does not touch it. A restart rebuilds it from the topic.

The feed is polled on the worker's own thread, between batches, not on a thread of its own:
before a consumed batch is decoded, `TableFeed.catch_up` asks the broker for the table's
high watermarks and reads up to them. So

* an update the broker acknowledged before the worker consumed an event is seen by that
  event (the watermark asked for afterwards covers it);
* the table does not change while a batch is decoded: every prediction of the batch saw
  the same table position (`TableFeed.position`, the next offset of each partition), which
  the worker writes into the prediction's ``pipeline.enriched.at`` header;
* the table needs no lock. The price is one offsets request per table partition for each
  batch the worker consumes.

Records are read uncommitted: the high watermark is the end, and the end-of-partition
event moves the position past transaction markers. Write table topics without
transactions, or an aborted update is applied too.

A table whose policy is ``--enrich-missing NAME=wait:MS`` records the keys it was asked for
and lacked. `TableWaits.decode` then reads that table for up to MS, counted from the first
such miss of the consumed batch, until every missed entity has arrived, and decodes the
records again with the table as it is now (and a ``pipeline.enriched.at`` that says so).
A consumed batch waits at most MS however many entities it misses: the partition never
stalls longer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any, Final, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from pipeline.engine.enrich import EnrichSpec, EntityTable, Table
from pipeline.engine.framing import FramedReader, FrameProblem, frame_schema_id, is_framed
from pipeline.errors import ConfigError
from pipeline.metrics import Sensor
from pipeline.metrics.health import Readiness

__all__ = [
    "TableFeed",
    "TableWaits",
    "catch_up",
    "defaulted_headers",
    "enriched_at",
    "load_tables",
]

log = logging.getLogger("pipeline.enrich")

_READ: Final = 10_000  # records taken per consume call
_POLL_S: Final = 0.1
_ASK_TIMEOUT_S: Final = 10.0  # a watermark or metadata request
_CATCH_UP_S: Final = 5.0  # before a batch: past this, the batch uses the table as it is
_LOGGED_PROBLEMS: Final = 5  # bad table records logged one by one, per feed
_WAIT_POLL_S: Final = 0.01  # a wait for missing entities checks for them this often

Decoded = TypeVar("Decoded")


class TableFeed:
    """One enrichment table and the consumer that keeps it current.

    Args:
        spec: The ``--enrich`` it serves.
        settings: Client settings (bootstrap servers, security) shared with the worker.
        make_consumer: Makes the consumer (tests pass stand-ins).
        sensor: Receives the table's rows and estimated bytes.
        max_bytes: The table's bound: over it while loading, the worker refuses to start.
        framed: Reads values written by a Schema Registry serializer (Avro, JSON Schema,
            Protobuf records of named values); None (no --schema-registry-url) makes each
            such value a skipped record whose warning says to give the registry.
    """

    def __init__(
        self,
        spec: EnrichSpec,
        settings: dict[str, Any],
        make_consumer: Callable[[dict[str, Any]], Consumer],
        sensor: Sensor,
        max_bytes: int,
        framed: FramedReader | None = None,
    ) -> None:
        self.spec = spec
        self._framed = framed
        self.table = EntityTable()
        # The keys the join asked for and the table lacked, kept for a wait:MS policy only.
        self.missed: set[str] = set()
        self.lookup: Table = _Recording(self.table, self.missed) if spec.wait_ms else self.table
        self._sensor = sensor
        self._max_bytes = max_bytes
        self._partitions: list[int] = []
        self._next: dict[int, int] = {}  # partition -> offset after the last one applied
        self._problems = 0
        self._over_bound = False
        self._consumer = make_consumer(
            {
                **settings,
                "group.id": f"pipeline-enrich-{spec.name}",  # required; never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_uncommitted",
            }
        )

    def check(self, admin: AdminClient) -> None:
        """Find the topic's partitions; warn if its cleanup.policy is not compact.

        Raises:
            ConfigError: The topic does not exist.
        """
        topic = self.spec.topic
        try:
            # All topics: a request naming the topic could make the broker create it.
            meta = admin.list_topics(timeout=_ASK_TIMEOUT_S).topics.get(topic)
        except KafkaException as exc:
            raise ConfigError(f"cannot read table topic {topic!r}'s metadata: {exc}") from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise ConfigError(
                f"table topic {topic!r} of --enrich {self.spec} does not exist: create it "
                "compacted (kafka-topics.sh --create --topic "
                f"{topic} --config cleanup.policy=compact) and produce each entity's latest "
                "values to it, keyed by the entity"
            )
        self._partitions = sorted(meta.partitions)
        policy = _cleanup_policy(admin, topic)
        if policy is not None and "compact" not in policy.split(","):
            log.warning(
                "table topic %r has cleanup.policy=%s, not compact: retention deletes old "
                "values, so an entity not updated within retention.ms disappears from the "
                "table after a restart, and loading reads every update still kept. Set "
                "cleanup.policy=compact on it",
                topic,
                policy,
            )

    def load(self, stopping: Callable[[], bool]) -> bool:
        """Read the whole table, up to the high watermarks of now; return False if
        `stopping` said so first.

        Raises:
            ConfigError: The table grew over its bound (`max_bytes`).
        """
        started = time.monotonic()
        self._consumer.assign(
            [TopicPartition(self.spec.topic, p, 0) for p in self._partitions]  # from the start
        )
        highs = self._highs()
        while not self._reached(highs):
            if stopping():
                return False
            self._apply(self._consumer.consume(_READ, _POLL_S))
            if self.table.nbytes > self._max_bytes:
                raise ConfigError(
                    f"table topic {self.spec.topic!r} (--enrich {self.spec}) holds more than "
                    f"--enrich-max-bytes {self._max_bytes}: {len(self.table)} entities took an "
                    f"estimated {self.table.nbytes} bytes while it was loading. "
                    "Raise --enrich-max-bytes if the host has the memory, or keep fewer or "
                    "smaller values in the topic"
                )
        self._report()
        log.info(
            "table %s loaded from %r: %d entities, %d bytes estimated, in %.2f s",
            self.spec.name,
            self.spec.topic,
            len(self.table),
            self.table.nbytes,
            time.monotonic() - started,
        )
        return True

    def catch_up(self) -> None:
        """Read the table up to the high watermarks the broker gives now (at most
        `_CATCH_UP_S`; past that, or if the broker does not answer, the table stays as it
        is and a warning says so)."""
        try:
            highs = self._highs()
        except KafkaException as exc:
            log.warning("table %s: cannot ask for its end (%s); using it as it is", self.spec, exc)
            return
        deadline = time.monotonic() + _CATCH_UP_S
        while not self._reached(highs):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "table %s: not caught up within %.0f s; this batch uses it as it is",
                    self.spec,
                    _CATCH_UP_S,
                )
                break
            self._apply(self._consumer.consume(_READ, min(left, _POLL_S)))
        self._report()

    def read(self, timeout_s: float) -> None:
        """Apply what arrives within `timeout_s` (sooner if records come)."""
        self._apply(self._consumer.consume(_READ, timeout_s))
        self._report()

    def arrived(self) -> int:
        """How many of the missed keys the table holds now."""
        return sum(key in self.table for key in self.missed)

    def drain(self) -> None:
        """Apply the records already fetched, without waiting."""
        self._apply(self._consumer.consume(_READ, 0))
        self._report()

    def position(self) -> dict[str, int]:
        """Partition (as text) -> the offset after the last record applied."""
        return {str(p): self._next.get(p, 0) for p in self._partitions}

    def close(self) -> None:
        self._consumer.close()

    def _highs(self) -> dict[int, int]:
        topic = self.spec.topic
        return {
            p: self._consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=_ASK_TIMEOUT_S, cached=False
            )[1]
            for p in self._partitions
        }

    def _reached(self, highs: dict[int, int]) -> bool:
        return all(self._next.get(p, 0) >= high for p, high in highs.items())

    def _apply(self, msgs: Sequence[Message]) -> None:
        """Apply consumed records to the table: a value replaces, a null value deletes."""
        for m in msgs:
            partition: int = m.partition()  # type: ignore[assignment]
            offset: int = m.offset()  # type: ignore[assignment]
            err = m.error()
            if err is not None:
                if err.code() == RdKafkaError._PARTITION_EOF:  # past any transaction marker
                    self._next[partition] = max(self._next.get(partition, 0), offset)
                else:
                    log.warning("table %s: reading failed: %s", self.spec, err)
                continue
            self._next[partition] = offset + 1
            key = m.key()
            try:
                text = key.decode() if isinstance(key, bytes) else None
            except UnicodeDecodeError:
                text = None
            problem = (
                "the key must be UTF-8 text (the entity's key)"
                if text is None
                else self._put(text, m.value())
            )
            if problem is not None:
                self._bad_record(partition, offset, problem)

    def _put(self, key: str, value: bytes | None) -> str | None:
        """Apply one record's value: JSON text, or a Schema Registry framed record."""
        if not value or not is_framed(value):
            return self.table.put(key, value)
        try:
            schema_id = frame_schema_id(value)
            if self._framed is None:
                return (
                    f"the value is Schema Registry framed (schema id {schema_id}); give the "
                    "worker --schema-registry-url to read it, or write the table's values "
                    "as JSON objects"
                )
            record = self._framed.read(schema_id, value)
        except FrameProblem as problem:
            return f"{problem.error_type}: {problem.message}"
        return self.table.put_record(key, record)

    def _bad_record(self, partition: int, offset: int, problem: str) -> None:
        self._problems += 1
        if self._problems <= _LOGGED_PROBLEMS:
            log.warning(
                "table %s: skipped record %s/%d/%d: %s%s",
                self.spec.name,
                self.spec.topic,
                partition,
                offset,
                problem,
                "; further bad records are counted, not logged"
                if self._problems == _LOGGED_PROBLEMS
                else "",
            )

    def _report(self) -> None:
        rows, nbytes = len(self.table), self.table.nbytes
        self._sensor.enrich_table(self.spec.name, rows, nbytes)
        if nbytes > self._max_bytes and not self._over_bound:
            log.warning(
                "table %s grew to an estimated %d bytes, over --enrich-max-bytes %d: the "
                "worker keeps running, but would refuse to start with this table",
                self.spec,
                nbytes,
                self._max_bytes,
            )
        self._over_bound = nbytes > self._max_bytes


class _Recording:
    """A table's lookup that records the keys it lacked."""

    __slots__ = ("_missed", "_table")

    def __init__(self, table: EntityTable, missed: set[str]) -> None:
        self._table = table
        self._missed = missed

    def get(self, key: str, /) -> Mapping[str, Any] | None:
        row = self._table.get(key)
        if row is None:
            self._missed.add(key)
        return row


class TableWaits:
    """Catch the tables up before each consumed batch, and give the entities of
    ``wait:MS`` tables that a decode missed up to MS to arrive (see the module docstring).

    Args:
        feeds: Every table of the worker, in flag order.
        sensor: Receives, per waiting table, the entities that arrived, those that did not,
            and the seconds waited.
    """

    def __init__(self, feeds: Sequence[TableFeed], sensor: Sensor) -> None:
        self._feeds = feeds
        self._waiting = [f for f in feeds if f.spec.wait_ms]
        self._sensor = sensor
        self._deadlines: dict[str, float] = {}  # table -> end of its wait, this batch
        self.at: bytes | None = None  # the tables' position the next decode joins with

    def begin(self) -> None:
        """A batch was consumed: read every table to its end (`catch_up`); its waits start
        afresh."""
        self._deadlines.clear()
        self.at = catch_up(self._feeds)

    def decode(self, decode: Callable[[], Decoded]) -> tuple[Decoded, bytes | None]:
        """Run `decode` (which joins through the tables); if a ``wait:MS`` table lacked an
        entity, wait for the missed entities (bounded), and if any arrived, run `decode`
        again. Return its result and the tables' position it was joined with."""
        for feed in self._waiting:
            feed.missed.clear()
        decoded, at = decode(), self.at
        missing = [f for f in self._waiting if f.missed]
        if missing:
            arrived = self._wait(missing)
            self.at = enriched_at(self._feeds)  # the wait read on: later decodes see more
            if arrived:
                decoded, at = decode(), self.at
        return decoded, at

    def _wait(self, feeds: list[TableFeed]) -> bool:
        """Read `feeds` until each holds every key it missed or its wait is over; return
        whether any missed entity arrived."""
        started = time.monotonic()
        for feed in feeds:
            self._deadlines.setdefault(feed.spec.name, started + feed.spec.wait_ms / 1000)
        pending = feeds
        while True:
            now = time.monotonic()
            pending = [
                f for f in pending
                if f.arrived() < len(f.missed) and now < self._deadlines[f.spec.name]
            ]  # fmt: skip
            if not pending:
                break
            left = min(self._deadlines[f.spec.name] for f in pending) - now
            for feed in pending:
                feed.read(min(left, _WAIT_POLL_S))
        waited = time.monotonic() - started
        any_arrived = False
        for feed in feeds:
            arrived = feed.arrived()
            any_arrived = any_arrived or arrived > 0
            self._sensor.enrich_waited(feed.spec.name, arrived, len(feed.missed) - arrived, waited)
        return any_arrived


def enriched_at(feeds: Sequence[TableFeed]) -> bytes:
    """The ``pipeline.enriched.at`` header: table topic -> partition -> next offset, JSON."""
    return orjson.dumps({f.spec.topic: f.position() for f in feeds})


def defaulted_headers(
    defaulted: Mapping[int, Sequence[str]], offsets: Sequence[int], sensor: Sensor
) -> dict[int, bytes] | None:
    """The ``pipeline.enriched.defaults`` header of each decoded row that took the model's
    defaults (`Decoded.defaulted`: index -> tables), by record offset; counts those rows per
    table in `sensor`. None if no row did."""
    if not defaulted:
        return None
    for table, rows in Counter(chain(*defaulted.values())).items():
        sensor.enrich_defaulted(table, rows)
    return {offsets[i]: ",".join(tables).encode() for i, tables in defaulted.items()}


def load_tables(
    feeds: Sequence[TableFeed],
    admin: AdminClient,
    readiness: Readiness,
    stopping: Callable[[], bool],
) -> None:
    """Read every table to its end before the worker consumes (and so before /readyz
    says ready); stop early if `stopping` says so.

    Raises:
        ConfigError: A table topic does not exist, or a table is over its bound.
    """
    if not feeds:
        return
    readiness.wait_for("tables", "loading the --enrich tables")
    for feed in feeds:
        feed.check(admin)
        if not feed.load(stopping):
            return
    readiness.done("tables")


def catch_up(feeds: Sequence[TableFeed]) -> bytes | None:
    """Read the tables up to their ends now, so the records consumed next see every
    update acknowledged before them; return the position they are joined with (the
    ``pipeline.enriched.at`` header), or None without tables."""
    if not feeds:
        return None
    for feed in feeds:
        feed.catch_up()
    return enriched_at(feeds)


def _cleanup_policy(admin: AdminClient, topic: str) -> str | None:
    """The topic's cleanup.policy, or None if the broker does not say."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        described = admin.describe_configs([resource])[resource].result(_ASK_TIMEOUT_S)
    except KafkaException as exc:
        log.warning("cannot read table topic %r's cleanup.policy: %s", topic, exc)
        return None
    entry = described.get("cleanup.policy")
    return None if entry is None else str(entry.value)

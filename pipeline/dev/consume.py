"""`pipeline consume`: print a topic's records, the way kcat -C does.

It follows the topic (waits for new records) until ``--count`` records were printed or
SIGINT/SIGTERM; with ``--exit`` it stops at the end of every partition instead, or after
``--timeout`` seconds without a record, whichever comes first. Without ``--group`` it reads
the partitions directly (no group, nothing committed); with ``--group`` it joins that
consumer group and commits what it printed and nothing more, so the next run goes on from
there: a partition it printed nothing from keeps the offset this run started it at.

Where it starts (``--offset``): ``beginning``, ``end`` (the default: only new records),
``stored`` (the group's committed offsets), ``N`` (offset N of every partition read),
``-N`` (N records before the end of each) or ``s@TS`` (the first record at or after TS,
milliseconds since the epoch). Records print as JSON lines (topic, partition, offset,
timestamp, key, headers, value) or, with ``--format value``, as their values alone,
preceded by the key and ``-K``'s delimiter if given.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError

from pipeline.errors import ConfigError, KafkaError
from pipeline.kafka.clientlog import client_settings
from pipeline.kafka.topics import admin_client, reach
from pipeline.startup import early_stop

__all__ = ["ConsumeOptions", "consume", "parse_offset", "record"]

_METADATA_TIMEOUT_S = 15.0
_IDLE_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class ConsumeOptions:
    """What to read and how to print it.

    Attributes:
        topic: The topic to read.
        partitions: Only these partitions (default: every one).
        group: Join this consumer group and commit what was printed (default: no group).
        offset: Where to start: see the module docstring.
        count: Stop after this many records.
        exit_at_end: Stop at the end of every partition read (kcat -e).
        timeout_s: With `exit_at_end`: also stop after this many seconds without a record.
        fmt: ``json`` (one object a record) or ``value`` (the value alone).
        key_delimiter: With ``value``: print the key and this before the value.
        isolation: ``read_committed`` (the default) or ``read_uncommitted``.
    """

    topic: str
    partitions: tuple[int, ...] = ()
    group: str | None = None
    offset: str = "end"
    count: int | None = None
    exit_at_end: bool = False
    timeout_s: float | None = None
    fmt: str = "json"
    key_delimiter: str | None = None
    isolation: str = "read_committed"

    def __post_init__(self) -> None:
        parse_offset(self.offset)
        if self.offset == "stored" and self.group is None:
            raise ConfigError("--offset stored reads a group's committed offsets: add --group")
        if self.timeout_s is not None and not self.exit_at_end:
            raise ConfigError(
                "--timeout applies with --exit (stop after that many seconds without a "
                "record); without --exit, consume follows the topic until --count or Ctrl-C"
            )
        if self.key_delimiter is not None and self.fmt != "value":
            raise ConfigError("-K prints the key before the value: use it with --format value")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"--count must be an integer >= 1, got {self.count}")


def parse_offset(text: str) -> tuple[str, int]:
    """``--offset`` as ``(kind, number)``: kind is beginning, end, stored, absolute,
    from_end or time.

    Raises:
        ConfigError: `text` is none of the forms.
    """
    if text in ("beginning", "end", "stored"):
        return text, 0
    try:
        if text.startswith("s@"):
            return "time", int(text[2:])
        number = int(text)
    except ValueError:
        raise ConfigError(
            f"--offset takes beginning, end, stored, N, -N or s@TIMESTAMP_MS, got {text!r}"
        ) from None
    return ("from_end", -number) if text.startswith("-") else ("absolute", number)


def consume(
    options: ConsumeOptions,
    *,
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    out: TextIO = sys.stdout,
) -> int:
    """Print records as `options` say until they say stop; return how many were printed.

    Raises:
        BrokerUnreachable: no broker answered.
        KafkaError: the topic's partitions could not be read, or a fatal client error.
    """
    with _stop_on_signals() as stopped:
        # An unreachable broker: one line, exit 4. An admin client's log lines wait until
        # it is polled, so librdkafka's own "Connection refused" does not come before it.
        reach(admin_client(bootstrap_servers, kafka), bootstrap_servers)
        consumer = Consumer(_settings(options, bootstrap_servers, kafka))
        reader = _Reader(options, consumer, out)
        try:
            reader.start()
            reader.run(stopped)
        except KafkaException as exc:
            raise KafkaError(f"consume from {options.topic} failed: {exc.args[0]}") from exc
        finally:
            consumer.close()
    return reader.printed


def _settings(
    options: ConsumeOptions, bootstrap_servers: str, kafka: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "group.id": options.group or f"pipeline-consume-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if options.offset == "beginning" else "latest",
        "enable.auto.commit": options.group is not None,
        # Only what was printed is committed: librdkafka would store the offset of every
        # record it hands over, and of a partition's end, printed or not.
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "isolation.level": options.isolation,
        **client_settings(bootstrap_servers, kafka),
    }


class _Reader:
    """Reads and prints; knows which partitions reached their end."""

    def __init__(self, options: ConsumeOptions, consumer: Consumer, out: TextIO) -> None:
        self.options = options
        self.consumer = consumer
        self.out = out
        self.printed = 0
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.idle_since = time.monotonic()

    def start(self) -> None:
        """Assign the partitions (no group, or chosen partitions) or join the group."""
        o = self.options
        if o.group is not None and not o.partitions:
            self.consumer.subscribe([o.topic], on_assign=self._on_assign, on_revoke=self._revoke)
            return
        partitions = o.partitions or self._all_partitions()
        self.consumer.assign(self._positioned(partitions))
        self.assigned = set(partitions)

    def run(self, stopped: threading.Event) -> None:
        """Print records until the count, the end (with --exit), idleness or a signal."""
        o = self.options
        while not stopped.is_set() and not self._done():
            want = 100 if o.count is None else min(100, o.count - self.printed)
            for msg in self.consumer.consume(want, 0.2):
                self._take(msg)
            self.out.flush()

    def _done(self) -> bool:
        o = self.options
        if o.count is not None and self.printed >= o.count:
            return True
        if not o.exit_at_end:
            return False
        if self.assigned and self.at_end >= self.assigned:
            return True
        timeout = _IDLE_TIMEOUT_S if o.timeout_s is None else o.timeout_s
        return time.monotonic() - self.idle_since >= timeout

    def _take(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == RdKafkaError._PARTITION_EOF:
                self.at_end.add(msg.partition())
            elif err.fatal():
                raise KafkaError(f"consume from {self.options.topic} failed: {err}")
            return
        self.at_end.discard(msg.partition())
        self.idle_since = time.monotonic()
        if self.options.count is not None and self.printed >= self.options.count:
            return
        self.out.write(self._line(msg) + "\n")
        self.printed += 1
        if self.options.group is not None:
            self.consumer.store_offsets(message=msg)

    def _line(self, msg: Any) -> str:
        if self.options.fmt == "json":
            return orjson.dumps(record(msg)).decode()
        value = _text(msg.value()) or ""
        if self.options.key_delimiter is None:
            return value
        return f"{_text(msg.key()) or ''}{self.options.key_delimiter}{value}"

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [p.partition for p in partitions]
        stored = self.options.offset == "stored"
        consumer.assign(partitions if stored else self._positioned(numbers))
        # The group remembers where each partition starts, printed from or not: otherwise a
        # partition this run printed nothing from would start, next run, wherever
        # auto.offset.reset says (the end), skipping what is there.
        consumer.store_offsets(offsets=self._starts(numbers))
        self.assigned |= set(numbers)

    def _starts(self, partitions: list[int]) -> list[TopicPartition]:
        """Each partition's first offset to print, as a number (not OFFSET_END, ...)."""
        topic = self.options.topic
        if self.options.offset == "stored":
            wanted = [TopicPartition(topic, p) for p in partitions]
            placed = self.consumer.committed(wanted, timeout=_METADATA_TIMEOUT_S)
        else:
            placed = self._positioned(partitions)
        starts = []
        for tp in placed:
            offset = tp.offset
            if offset < 0:  # beginning, end, or never committed (auto.offset.reset: latest)
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=_METADATA_TIMEOUT_S
                )
                offset = low if offset == OFFSET_BEGINNING else high
            starts.append(TopicPartition(topic, tp.partition, offset))
        return starts

    def _revoke(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        self.assigned -= gone
        self.at_end -= gone

    def _all_partitions(self) -> list[int]:
        topic = self.options.topic
        meta = self.consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            why = meta.error if meta is not None and meta.error is not None else "no partitions"
            raise KafkaError(f"cannot read topic {topic!r}: {why}; check its name")
        return sorted(meta.partitions)

    def _positioned(self, partitions: Iterable[int]) -> list[TopicPartition]:
        """The partitions, each at the start offset ``--offset`` says."""
        kind, number = parse_offset(self.options.offset)
        topic = self.options.topic
        if kind == "time":
            wanted = [TopicPartition(topic, p, number) for p in partitions]
            return list(self.consumer.offsets_for_times(wanted, timeout=_METADATA_TIMEOUT_S))
        placed = []
        for p in partitions:
            offset = {"beginning": OFFSET_BEGINNING, "end": OFFSET_END}.get(kind, number)
            if kind == "from_end":
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=_METADATA_TIMEOUT_S
                )
                offset = max(low, high - number)
            placed.append(TopicPartition(topic, p, offset))
        return placed


def record(msg: Any) -> dict[str, Any]:
    """A record as one JSON-ready object: where it is, its key, headers and value."""
    value = msg.value()
    try:
        shown: Any = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        shown = _text(value)
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": msg.timestamp()[1],
        "key": _text(msg.key()),
        "value": shown,
        "headers": {k: _text(v) for k, v in (msg.headers() or [])},
    }


def _text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return raw.decode("utf-8", "replace")


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (main thread only)."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stopped.set())
    if early_stop() is not None:  # it came while the command started
        stopped.set()
    try:
        yield stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""Stand-ins for confluent-kafka's clients, for unit tests of the worker's own decisions.

They implement only what the worker calls, record every call, and follow a script:
`FakeConsumer` hands out scripted records and runs scripted rebalances at the point the
script reaches them (inside `poll` or `consume`, as librdkafka serves its callbacks);
`FakeProducer` keeps what was produced until `poll`/`flush`, then reports each delivery.
Every behaviour tested here with fakes is also tested against the real broker in
tests/integration and tests/reliability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition


@dataclass
class FakeMessage:
    """A consumed record, or a delivered output (what a delivery callback receives)."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _headers: list[tuple[str, bytes | None]] | None = None
    _timestamp: int = 1_700_000_000_000
    _error: KafkaError | None = None
    _bad_header_names: bool = False

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        if self._bad_header_names:  # what confluent-kafka 2.16 does with a non-UTF-8 name
            raise SystemError("<method 'headers'> returned a result with an exception set")
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)

    def error(self) -> KafkaError | None:
        return self._error


Action = Callable[[], None]


@dataclass
class FakeTopicPartition:
    """A TopicPartition as commit() and committed() return it (the real one's `error` is
    read-only)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class _Break:
    """A script step that ends the current `poll`/`consume` call: the next records come in
    the worker's next loop turn."""


BREAK = _Break()
Step = FakeMessage | Action | _Break


class FakeConsumer:
    """Hands out `script` in order: messages are returned, actions (rebalances) are run."""

    def __init__(self, settings: dict[str, Any], script: list[Step] | None = None) -> None:
        self.settings = settings
        self.script: list[Step] = list(script or [])
        self.on_assign: Callable[[Any, list[TopicPartition]], None] | None = None
        self.on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None
        self.on_lost: Callable[[Any, list[TopicPartition]], None] | None = None
        self.commits: list[list[tuple[str, int, int]]] = []
        self.commit_errors: dict[tuple[str, int], KafkaError] = {}
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.committed_errors: dict[tuple[str, int], KafkaError] = {}
        self.seeks: list[tuple[str, int, int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.pause_calls: list[list[tuple[str, int]]] = []
        self.resume_calls: list[list[tuple[str, int]]] = []
        self.closed = False
        self.when_done: Action | None = None  # called once the script is used up
        self._commit_reports: list[list[FakeTopicPartition]] = []  # served by poll/consume

    # -- the script ------------------------------------------------------------------------

    def assign(self, *tps: tuple[str, int]) -> Action:
        return lambda: self._rebalance(self.on_assign, tps)

    def revoke(self, *tps: tuple[str, int]) -> Action:
        return lambda: self._rebalance(self.on_revoke, tps)

    def lose(self, *tps: tuple[str, int]) -> Action:
        return lambda: self._rebalance(self.on_lost, tps)

    def _rebalance(self, callback: Any, tps: Iterable[tuple[str, int]]) -> None:
        assert callback is not None, "subscribe() was not called"
        callback(self, [TopicPartition(t, p) for t, p in tps])

    def _next_messages(self, limit: int) -> list[FakeMessage]:
        on_commit = self.settings.get("on_commit")
        reports, self._commit_reports = self._commit_reports, []
        for report in reports:  # as librdkafka: commit results come from poll/consume
            if on_commit is not None:
                on_commit(None, report)
        out: list[FakeMessage] = []
        while self.script and len(out) < limit:
            step = self.script.pop(0)
            if isinstance(step, _Break):
                break
            if isinstance(step, FakeMessage):
                out.append(step)
            else:
                step()
        if not self.script and self.when_done is not None:
            done, self.when_done = self.when_done, None
            done()
        return out

    # -- what the worker calls -------------------------------------------------------------

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.on_assign = callbacks.get("on_assign")
        self.on_revoke = callbacks.get("on_revoke")
        self.on_lost = callbacks.get("on_lost")

    def poll(self, timeout: float | None = None) -> FakeMessage | None:
        got = self._next_messages(1)
        return got[0] if got else None

    def consume(self, num_messages: int = 1, timeout: float | None = None) -> list[FakeMessage]:
        return self._next_messages(num_messages)

    def commit(
        self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True
    ) -> list[FakeTopicPartition] | None:
        assert offsets is not None
        done = []
        for tp in offsets:
            error = self.commit_errors.get((tp.topic, tp.partition))
            if error is None:
                self.committed_offsets[(tp.topic, tp.partition)] = tp.offset
            done.append(FakeTopicPartition(tp.topic, tp.partition, tp.offset, error))
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        if asynchronous:
            self._commit_reports.append(done)
            return None
        return done

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            offset = self.committed_offsets.get(key, -1001)
            out.append(
                FakeTopicPartition(tp.topic, tp.partition, offset, self.committed_errors.get(key))
            )
        return out

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        return object()  # the broker answers

    def pause(self, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.pause_calls.append(tps)
        self.paused |= set(tps)

    def resume(self, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.resume_calls.append(tps)
        self.paused -= set(tps)

    def consumer_group_metadata(self) -> object:
        return object()

    def close(self) -> None:
        self.closed = True


@dataclass
class Produced:
    """One record given to `FakeProducer.produce`."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    on_delivery: Callable[[KafkaError | None, Any], None]


@dataclass
class FakeProducer:
    """Keeps produced records until `poll`/`flush`, then reports their delivery.

    While `hold()` is true, `poll` reports nothing (slow acknowledgements); `flush` always
    reports everything. `refuse` decides, per record, an exception `produce` raises at once (as librdkafka
    does for a record over message.max.bytes); `fail` decides a delivery error.
    """

    settings: dict[str, Any]
    refuse: Callable[[Produced], KafkaException | None] = lambda _: None
    fail: Callable[[Produced], KafkaError | None] = lambda _: None
    hold: Callable[[], bool] = lambda: False
    produced: list[Produced] = field(default_factory=list)
    pending: list[Produced] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    sent_offsets: list[list[tuple[str, int, int]]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        on_delivery: Any = None,
        **_: Any,
    ) -> None:
        record = Produced(topic, value, key, list(headers or []), on_delivery)
        refused = self.refuse(record)
        if refused is not None:
            raise refused
        self.produced.append(record)
        self.pending.append(record)

    def poll(self, timeout: float | None = None) -> int:
        if self.hold():
            return 0
        return self._deliver()

    def _deliver(self) -> int:
        delivered, self.pending = self.pending, []
        for n, record in enumerate(delivered):
            error = self.fail(record)
            msg = FakeMessage(record.topic, 0, n, record.value, record.key, record.headers)
            record.on_delivery(error, msg)
        return len(delivered)

    def flush(self, timeout: float | None = None) -> int:
        while self.pending:
            self._deliver()
        return 0

    def __len__(self) -> int:
        return len(self.pending)

    # exactly-once
    def init_transactions(self, timeout: float) -> None:
        self.transactions.append("init")

    def begin_transaction(self) -> None:
        self.transactions.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.transactions.append("send_offsets")
        self.sent_offsets.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self.flush()
        self.transactions.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.pending = []
        self.transactions.append("abort")

    def purge(self, **_: Any) -> None:
        self.pending = []


class FakeAdmin:
    """Answers `list_topics` with every topic the worker asks about, 1 partition each."""

    def __init__(self, settings: dict[str, Any], topics: Iterable[str] = ()) -> None:
        self.settings = settings
        self.topics = set(topics)

    def list_topics(self, timeout: float = -1) -> Any:
        @dataclass
        class _Topic:
            partitions: dict[int, object]

        @dataclass
        class _Meta:
            topics: dict[str, _Topic]

        return _Meta({t: _Topic({0: object()}) for t in self.topics})

    def poll(self, timeout: float = 0) -> int:
        return 0  # no log lines or callbacks queued

    def describe_configs(self, resources: Any, **_: Any) -> dict[Any, Any]:
        return {}


def kafka_error(code: int, *, fatal: bool = False, retriable: bool = False) -> KafkaError:
    """A librdkafka error with `code` (e.g. KafkaError.MSG_SIZE_TOO_LARGE)."""
    return KafkaError(code, fatal=fatal, retriable=retriable)

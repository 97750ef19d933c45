"""The worker's own decisions, with stand-in Kafka clients: what it produces, dead-letters,
pauses, resumes, seeks and commits when Kafka says something unusual.

Each behaviour here is also exercised against the real broker in tests/integration and
tests/reliability; these tests pin the decision itself, deterministically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import WorkerConfig
from pipeline.errors import KafkaError as PipelineKafkaError
from pipeline.kafka import committer
from pipeline.kafka.worker import KafkaClients, Worker

from .fakekafka import BREAK, FakeAdmin, FakeConsumer, FakeMessage, FakeProducer, Produced, Step

MODELS = Path(__file__).resolve().parents[2] / "models"
MLP = "breast-cancer-mlp"
IN, OUT, DLQ = "in", "out", "out.dlq"
ROW = orjson.loads((Path(__file__).resolve().parents[2] / "schemas/examples/feature-event-array.json").read_bytes())["features"]  # fmt: skip


def event(n: int, **extra: Any) -> bytes:
    return orjson.dumps({"id": f"e-{n}", "features": ROW, **extra})


def record(partition: int, offset: int, value: bytes | None = None, **kw: Any) -> FakeMessage:
    return FakeMessage(IN, partition, offset, event(offset) if value is None else value, **kw)


class Run:
    """A worker wired to stand-in clients; `go` runs it until the consumer's script ends."""

    def __init__(self, **settings: Any) -> None:
        settings = {"max_wait_ms": 0, "commit_interval_ms": 1, **settings}
        self.config = WorkerConfig(
            input_topics=(IN,), output_topic=OUT, dlq_topic=DLQ, models=MODELS,
            default_model=MLP, **settings,
        )  # fmt: skip
        self.consumer = FakeConsumer({})
        self.producers: list[FakeProducer] = []
        self.refuse: Callable[[Produced], KafkaException | None] = lambda _: None
        self.fail: Callable[[Produced], KafkaError | None] = lambda _: None
        self.hold = False
        clients = KafkaClients(
            consumer=self._consumer, producer=self._producer,
            admin=lambda s: FakeAdmin(s, [IN, OUT, DLQ]),
        )  # fmt: skip
        self.worker = Worker(self.config, clients=clients)
        self.consumer.when_done = self.worker.stop

    def _consumer(self, settings: dict[str, Any]) -> Any:
        self.consumer.settings = settings
        return self.consumer

    def _producer(self, settings: dict[str, Any]) -> Any:
        producer = FakeProducer(
            settings, refuse=self._refuse, fail=self._fail, hold=lambda: self.hold
        )
        self.producers.append(producer)
        return producer

    def _refuse(self, record: Produced) -> KafkaException | None:
        return self.refuse(record)

    def _fail(self, record: Produced) -> KafkaError | None:
        return self.fail(record)

    def go(self, *script: Step) -> None:
        self.consumer.script = list(script)
        assert self.worker.run() == 0

    @property
    def produced(self) -> list[Produced]:
        return [r for p in self.producers for r in p.produced]

    def outputs(self, topic: str) -> list[Produced]:
        return [r for r in self.produced if r.topic == topic]

    def last_commit(self, partition: int = 0) -> int | None:
        """The last position committed for `partition`, by the consumer or a transaction."""
        commits = [*self.consumer.commits, *(c for p in self.producers for c in p.sent_offsets)]
        positions = [o for c in commits for t, p, o in c if (t, p) == (IN, partition)]
        return positions[-1] if positions else None


@pytest.fixture
def run() -> Iterator[Callable[..., Run]]:
    yield Run


def headers(r: Produced) -> dict[str, bytes | None]:
    return dict(r.headers)


def too_large(limit: int) -> Callable[[Produced], KafkaException | None]:
    """Refuse, at produce time, any record whose value is over `limit` bytes."""

    def refuse(r: Produced) -> KafkaException | None:
        if len(r.value or b"") > limit:
            return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        return None

    return refuse


# -- stopping ---------------------------------------------------------------------------------


def test_a_worker_stopped_before_it_runs_asks_kafka_nothing_and_exits_0() -> None:
    """A SIGTERM while it connected to a registry: run() leaves at once, no topics made,
    no producer, no group joined, the consumer closed."""
    asked: list[dict[str, Any]] = []
    consumer = FakeConsumer({})
    clients = KafkaClients(
        consumer=lambda _: consumer,
        producer=lambda s: asked.append(s),
        admin=lambda s: asked.append(s),
    )  # fmt: skip
    config = WorkerConfig(input_topics=(IN,), output_topic=OUT, dlq_topic=DLQ, models=MODELS,
                          default_model=MLP)  # fmt: skip
    worker = Worker(config, clients=clients)
    worker.stop()

    assert worker.run() == 0
    assert asked == [] and consumer.closed
    assert consumer.on_assign is None  # never subscribed


# -- records the broker refuses ---------------------------------------------------------------


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_dead_letter_too_large_to_produce_is_written_without_its_value(
    run: Callable[..., Run], guarantee: str
) -> None:
    r = run(guarantee=guarantee)
    big = orjson.dumps({"id": "big", "features": ROW, "blob": "x" * 200_000})
    r.refuse = too_large(100_000)
    r.go(r.consumer.assign((IN, 0)), record(0, 0, big), record(0, 1))

    (dead,) = r.outputs(DLQ)
    h = headers(dead)
    assert dead.value is None
    assert h["pipeline.error.stage"] == b"decode" and h["pipeline.error.type"] == b"TooLarge"
    assert h["pipeline.value.omitted"] == str(len(big)).encode()
    assert h["pipeline.source.offset"] == b"0" and h["pipeline.source.topic"] == IN.encode()
    assert [orjson.loads(p.value or b"")["id"] for p in r.outputs(OUT)] == ["e-1"]
    assert r.last_commit() == 2
    if guarantee == "exactly-once":
        assert "abort" not in r.producers[-1].transactions
        assert r.producers[-1].transactions[-1] == "commit"


def test_a_prediction_the_producer_refuses_becomes_a_produce_dead_letter(
    run: Callable[..., Run],
) -> None:
    r = run()
    r.refuse = lambda rec: (
        KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) if rec.topic == OUT else None
    )
    r.go(r.consumer.assign((IN, 0)), record(0, 0))

    (dead,) = r.outputs(DLQ)
    assert headers(dead)["pipeline.error.stage"] == b"produce"
    assert headers(dead)["pipeline.error.type"] == b"MsgSizeTooLarge"
    assert dead.value == event(0)
    assert r.last_commit() == 1


def test_a_dead_letter_whose_headers_are_too_large_drops_them_too(
    run: Callable[..., Run],
) -> None:
    r = run()

    def refuse(rec: Produced) -> KafkaException | None:
        size = len(rec.value or b"") + sum(len(k) + len(v or b"") for k, v in rec.headers)
        if size > 10_000:
            return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        return None

    r.refuse = refuse
    huge_headers: list[tuple[str, bytes | None]] = [("trace", b"t" * 20_000)]
    r.go(r.consumer.assign((IN, 0)), record(0, 0, b"not json", _headers=huge_headers))

    (dead,) = r.outputs(DLQ)
    h = headers(dead)
    assert dead.value is None and "trace" not in h
    assert h["pipeline.error.type"] == b"InvalidJson"
    assert h["pipeline.headers.omitted"] == b"1"
    assert r.last_commit() == 1


# -- rebalances and backpressure ---------------------------------------------------------------


def test_records_of_a_partition_revoked_before_they_were_processed_are_dropped(
    run: Callable[..., Run],
) -> None:
    r = run()
    c = r.consumer
    r.go(c.assign((IN, 0), (IN, 1)), record(0, 0), c.revoke((IN, 1)), record(1, 7), record(0, 1))

    ids = sorted(orjson.loads(p.value or b"")["id"] for p in r.outputs(OUT))
    assert ids == ["e-0", "e-1"], "e-7 belongs to a partition this worker no longer owns"
    assert r.last_commit(1) is None
    assert r.last_commit(0) == 2


def test_a_rebalance_that_leaves_the_partitions_held_says_so_not_assigned_nothing(
    run: Callable[..., Run], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 26 item 9: cooperative rebalancing hands over only what changed; a worker
    that kept both its partitions logged "assigned nothing"."""
    r = run()
    c = r.consumer
    with caplog.at_level(logging.INFO, logger="pipeline.worker"):
        r.go(c.assign((IN, 0), (IN, 1)), record(0, 0), c.assign(), record(1, 1))
    lines = [m for m in caplog.messages if m.startswith("assigned")]
    assert lines == [f"assigned {IN}[0], {IN}[1]",
                     f"assigned nothing new, holding {IN}[0], {IN}[1]"]  # fmt: skip


def test_a_paused_partition_that_comes_back_after_a_revoke_is_resumed(
    run: Callable[..., Run],
) -> None:
    r = run(max_in_flight=2, max_batch_size=1)
    c = r.consumer
    r.hold = True
    script: list[Step] = [c.assign((IN, 0)), record(0, 0), record(0, 1), record(0, 2), BREAK]
    script += [c.revoke((IN, 0)), c.assign((IN, 0)), record(0, 3), BREAK]
    r.go(*script)

    assert [(IN, 0)] in c.pause_calls, "two events in flight pause the partition"
    assert (IN, 0) not in c.paused, "a partition assigned again is not left paused"


def test_backpressure_also_pauses_partitions_that_become_busy_later(
    run: Callable[..., Run],
) -> None:
    r = run(max_in_flight=2, max_batch_size=1)
    c = r.consumer
    r.hold = True
    paused_when: list[set[tuple[str, int]]] = []
    script: list[Step] = [c.assign((IN, 0), (IN, 1)), record(0, 0), record(0, 1), record(0, 2)]
    script += [BREAK, record(1, 0), record(1, 1), BREAK]
    script += [lambda: paused_when.append(set(c.paused))]
    r.go(*script)

    assert paused_when and paused_when[0] >= {(IN, 0), (IN, 1)}


# -- exactly-once rewinds ----------------------------------------------------------------------


def test_an_abort_rewinds_to_where_the_transaction_started_even_with_offset_reset_latest(
    run: Callable[..., Run],
) -> None:
    r = run(guarantee="exactly-once", offset_reset="latest")
    failed_once: list[bool] = []

    def fail(rec: Produced) -> KafkaError | None:
        if not failed_once:
            failed_once.append(True)
            return KafkaError(KafkaError._MSG_TIMED_OUT)
        return None

    r.fail = fail
    r.go(r.consumer.assign((IN, 0)), record(0, 5), record(0, 6))

    assert r.consumer.seeks[0] == (IN, 0, 5), "not OFFSET_END: that would skip offsets 5 and 6"


def test_a_producer_that_raises_from_flush_aborts_the_transaction_instead_of_the_worker(
    run: Callable[..., Run],
) -> None:
    # A producer with a fatal error raises from flush; confluent-kafka has surfaced it as a
    # SystemError from the log callback (fault suite, T2, 2026-11-30).
    r = run(guarantee="exactly-once")

    def break_flush() -> None:
        producer = r.producers[-1]
        works = producer.flush

        def flush(timeout: float | None = None) -> int:
            producer.flush = works  # type: ignore[method-assign]
            raise SystemError("<class 'logging.LogRecord'> returned a result with an exception set")

        producer.flush = flush  # type: ignore[method-assign]

    r.go(r.consumer.assign((IN, 0)), break_flush, record(0, 0), BREAK, BREAK)

    assert "abort" in r.producers[0].transactions, r.producers[0].transactions


def test_committed_offsets_that_cannot_be_read_after_an_abort_stop_the_worker(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker asks again (1 s apart) until its deadline for reading committed offsets,
    # 90 s in production; 1.5 s here still takes the same path (a timed-out read, the
    # pending offsets released once, asked again, then the stop), without 90 s of sleeps.
    monkeypatch.setattr(committer, "_COMMITTED_DEADLINE_S", 1.5)
    r = run(guarantee="exactly-once")
    r.fail = lambda _: KafkaError(KafkaError._MSG_TIMED_OUT)
    r.consumer.committed_errors[(IN, 0)] = KafkaError(KafkaError._TIMED_OUT)
    with pytest.raises(PipelineKafkaError, match=r"committed offsets of in\[0\]"):
        r.go(r.consumer.assign((IN, 0)), record(0, 0))


# -- commits -----------------------------------------------------------------------------------


def test_a_commit_refused_for_one_partition_is_sent_again(run: Callable[..., Run]) -> None:
    r = run()
    c = r.consumer
    c.commit_errors[(IN, 0)] = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    r.go(c.assign((IN, 0)), record(0, 0), BREAK, lambda: c.commit_errors.clear(), BREAK, BREAK)

    assert c.committed_offsets.get((IN, 0)) == 1, c.commits


# -- odd records -------------------------------------------------------------------------------


def test_a_record_without_a_timestamp_gets_the_time_it_was_read(run: Callable[..., Run]) -> None:
    r = run()
    r.go(r.consumer.assign((IN, 0)), record(0, 0, _timestamp=-1))

    (prediction,) = r.outputs(OUT)
    assert orjson.loads(prediction.value or b"")["ts"] > 1_700_000_000_000


def test_header_names_that_are_not_utf8_do_not_stop_the_worker(run: Callable[..., Run]) -> None:
    r = run()
    r.go(
        r.consumer.assign((IN, 0)),
        record(0, 0, _bad_header_names=True),
        record(0, 1, b"{", _bad_header_names=True),
    )

    assert [orjson.loads(p.value or b"")["id"] for p in r.outputs(OUT)] == ["e-0"]
    (dead,) = r.outputs(DLQ)
    assert headers(dead)["pipeline.headers.omitted"] == b"1"
    assert r.last_commit() == 2


def test_dead_letters_for_unknown_models_do_not_show_the_store(run: Callable[..., Run]) -> None:
    r = run()
    r.go(r.consumer.assign((IN, 0)), record(0, 0, event(0, model="nope")))

    (dead,) = r.outputs(DLQ)
    message = (headers(dead)["pipeline.error.message"] or b"").decode()
    assert headers(dead)["pipeline.error.type"] == b"UnknownModel"
    assert "nope" in message
    assert str(MODELS) not in message and MLP not in message


# -- probes ------------------------------------------------------------------------------------


def test_ready_only_once_assigned_and_never_after_a_fatal_error(run: Callable[..., Run]) -> None:
    r = run()
    seen: list[tuple[bool, str]] = []
    look = lambda: seen.append(r.worker.readiness.ready())  # noqa: E731
    r.fail = lambda _: KafkaError(KafkaError._MSG_TIMED_OUT)
    with pytest.raises(PipelineKafkaError, match="was not delivered"):
        r.go(look, r.consumer.assign((IN, 0)), look, record(0, 0))
    look()

    assert seen[0] == (False, "waiting for the group to assign partitions")
    assert seen[1] == (True, "ready")
    assert not seen[2][0] and seen[2][1].startswith("stopped: the output for in[0]@0")
    assert r.worker.readiness.live()[0], "a fatal error is not a dead loop"

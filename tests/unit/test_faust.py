"""The Faust agent's own decisions, without a broker: acknowledging in order per partition
and only after delivery, refused records becoming (smaller) dead letters, a lost output
acknowledging nothing after it, and the settings `predict_agent` refuses.

The real Faust worker against the real broker is tested in
tests/integration/test_faust.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.engine.codec import EventDecoder
from pipeline.engine.engine import Engine, EngineLoop
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import ConfigError
from pipeline.faust.acks import InOrderAcks
from pipeline.faust.predictor import Predictor
from pipeline.faust.sender import DeliveryFailed, Sender

faust = pytest.importorskip("faust", reason="the [faust] extra is not installed")
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError  # noqa: E402
from faust.exceptions import ProducerSendError  # noqa: E402

from pipeline.faust import predict_agent  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MLP = "breast-cancer-mlp"
LOGREG = "breast-cancer-logreg"
ROW = [13.8, 15.79, 90.43, 584.1, 0.1007, 0.128, 0.07789, 0.05069, 0.1662, 0.06566, 0.2787,
       0.6205, 1.957, 23.35, 0.004717, 0.02065, 0.01759, 0.009206, 0.0122, 0.00313, 16.57,
       20.86, 110.3, 812.4, 0.1411, 0.3542, 0.2779, 0.1383, 0.2589, 0.103]  # fmt: skip


# -- in-order acknowledgement ---------------------------------------------------------------


def test_events_are_released_in_arrival_order_per_partition() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    a0, a1, a2 = (acks.arrived("a", f"a{i}") for i in range(3))
    b0 = acks.arrived("b", "b0")

    assert acks.delivered(a2) == []  # a0 and a1 are still in flight
    assert acks.delivered(b0) == ["b0"]  # another partition does not wait for them
    assert acks.delivered(a0) == ["a0"]
    assert acks.delivered(a1) == ["a1", "a2"]
    assert len(acks) == 0


def test_an_event_never_delivered_holds_back_its_partition_only() -> None:
    acks: InOrderAcks[int] = InOrderAcks()
    lost = acks.arrived("a", 0)
    later = [acks.arrived("a", i) for i in range(1, 5)]
    other = acks.arrived("b", 9)

    assert [acks.delivered(p) for p in later] == [[], [], [], []]
    assert acks.delivered(other) == [9]
    assert len(acks) == 5 and not lost.delivered


def test_delivering_an_event_twice_is_refused() -> None:
    acks: InOrderAcks[int] = InOrderAcks()
    first = acks.arrived("a", 0)
    acks.delivered(first)

    with pytest.raises(ValueError, match="delivered twice"):
        acks.delivered(first)


# -- fakes of Faust's message, event and producer -------------------------------------------


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = b"k"
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("trace", b"t")])
    timestamp: float = 1_700_000_000.0

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass(eq=False)
class Event:
    message: Message


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    delivery: asyncio.Future[None]


class FakeProducer:
    """Faust's producer: `send` returns the delivery; `refuse` and `fail` say which values
    are refused when handed over, and which deliveries fail, and how."""

    def __init__(self, *, hold: bool = False) -> None:
        self.sent: list[Sent] = []
        self.refuse: Callable[[bytes | None], bool] = lambda _: False
        self.fail: Callable[[Sent], BaseException | None] = lambda _: None
        self._hold = hold  # deliveries wait for `release`

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: Any,
                   timestamp: Any, headers: Any) -> asyncio.Future[None]:  # fmt: skip
        if self.refuse(value):
            raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()
        record = Sent(topic, key, value, headers, asyncio.get_running_loop().create_future())
        self.sent.append(record)
        if not self._hold:
            self._settle(record)
        return record.delivery

    def release(self) -> None:
        for record in self.sent:
            if not record.delivery.done():
                self._settle(record)

    def _settle(self, record: Sent) -> None:
        error = self.fail(record)
        if error is None:
            record.delivery.set_result(None)
        else:
            record.delivery.set_exception(error)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


def event(partition: int, offset: int, value: bytes | None = None, model: str = MLP) -> Event:
    if value is None:
        value = orjson.dumps({"id": f"e{partition}-{offset}", "model": model, "features": ROW})
    return Event(Message("features", partition, offset, value))


# -- the sender -------------------------------------------------------------------------------


def test_a_dead_letter_refused_whole_is_sent_without_its_value() -> None:
    producer = FakeProducer()
    producer.refuse = lambda value: value is not None and len(value) > 100
    sender = Sender(producer, output_topic="out", dlq_topic="dlq")

    run(sender.dead_letter(event(0, 7, b"x" * 500).message, ("decode", "TooLarge", "big")))

    (letter,) = producer.on("dlq")
    headers = dict(letter.headers or [])
    assert letter.value is None and letter.key == b"k"
    assert headers["pipeline.value.omitted"] == b"500" and headers["trace"] == b"t"
    assert (headers["pipeline.error.type"], headers["pipeline.source.offset"]) == (
        b"TooLarge",
        b"7",
    )


def test_predictions_refused_by_producer_or_broker_become_produce_dead_letters() -> None:
    producer = FakeProducer()
    producer.refuse = lambda value: value == b"p1"
    producer.fail = lambda s: MessageSizeTooLargeError() if s.value == b"p2" else None
    sender = Sender(producer, output_topic="out", dlq_topic="dlq")
    records = [event(0, i).message for i in range(3)]

    async def both() -> None:
        await sender.settle(await sender.hand_over(records, [b"p0", b"p1", b"p2"]))

    run(both())

    assert [s.value for s in producer.on("out")] == [b"p0", b"p2"]
    letters = {dict(s.headers or [])["pipeline.source.offset"]: s for s in producer.on("dlq")}
    assert sorted(letters) == [b"1", b"2"]
    for offset, who in ((b"1", "producer"), (b"2", "broker")):
        headers = dict(letters[offset].headers or [])
        assert headers["pipeline.error.stage"] == b"produce"
        assert headers["pipeline.error.type"] == b"MsgSizeTooLarge"
        assert headers["pipeline.error.message"].startswith(f"the {who} refused".encode())  # type: ignore[union-attr]
        assert letters[offset].value == records[int(offset)].value  # the input, unchanged


def test_a_lost_prediction_raises_naming_its_input() -> None:
    producer = FakeProducer()
    producer.fail = lambda s: KafkaTimeoutError() if s.value == b"p1" else None
    sender = Sender(producer, output_topic="out", dlq_topic="dlq")
    records = [event(3, 40 + i).message for i in range(2)]

    async def both() -> None:
        await sender.settle(await sender.hand_over(records, [b"p0", b"p1"]))

    with pytest.raises(DeliveryFailed, match=r"prediction of features\[3\] offset 41 was not"):
        run(both())


# -- the predictor: decode, engine, send, acknowledge ---------------------------------------


@dataclass
class Harness:
    producer: FakeProducer
    acked: list[Event] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    async def ack(self, e: Event) -> None:
        self.acked.append(e)

    async def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)

    async def predict(self, batches: Sequence[Sequence[Event]], until: Callable[[], bool],
                      between: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        engine: Engine[Any] = Engine(ModelCache(ModelStore(ROOT / "models")), max_wait_ms=0)
        runner = EngineLoop(engine)
        runner.start()
        predictor = Predictor(
            engine,
            EventDecoder(catalog=engine.models, default_model=MLP),
            Sender(self.producer, output_topic="out", dlq_topic="dlq"),
            ack=self.ack,
            on_failure=self.failed,
            max_in_flight=1000,
        )
        try:
            for batch in batches:
                await predictor.take(batch)
            while not until():
                await asyncio.sleep(0.01)
                between()
        finally:
            predictor.close()
            runner.stop()


def test_every_event_is_acked_once_in_order_after_its_output_is_delivered() -> None:
    h = Harness(FakeProducer(hold=True))
    events = [event(p, o) for o in range(6) for p in range(2)]
    events[5] = event(1, 2, b"{not json")  # a dead letter among the predictions
    released: list[int] = []

    def release_once_all_are_handed_over() -> None:
        if len(h.producer.sent) == len(events) and not released:
            released.append(len(h.acked))  # how many were acked before any delivery
            h.producer.release()

    run(h.predict([events[:7], events[7:]], lambda: len(h.acked) == len(events),
                  release_once_all_are_handed_over))  # fmt: skip

    assert released == [0], "an event was acked before its output was delivered"
    assert sorted(map(id, h.acked)) == sorted(map(id, events))
    for p in (0, 1):
        mine = [e.message.offset for e in h.acked if e.message.partition == p]
        assert mine == sorted(mine), f"partition {p} acked out of order: {mine}"
    assert len(h.producer.on("out")) == 11 and len(h.producer.on("dlq")) == 1
    assert not h.failures


def test_a_lost_output_leaves_its_batch_and_what_follows_on_its_partition_unacked() -> None:
    h = Harness(FakeProducer())
    lost_id = b'"id":"e0-2"'
    h.producer.fail = lambda s: KafkaTimeoutError() if s.value and lost_id in s.value else None
    before = [event(0, 0), event(1, 0), event(0, 1), event(1, 1)]
    failing = [event(0, 2, model=LOGREG), event(0, 3, model=LOGREG)]  # one batch of its own
    after = [event(0, 4), event(1, 2), event(1, 3)]

    run(h.predict([before, failing, after], lambda: bool(h.failures) and len(h.acked) >= 6))

    acked = sorted((e.message.partition, e.message.offset) for e in h.acked)
    assert acked == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    (failure,) = h.failures
    assert isinstance(failure, DeliveryFailed)
    assert "features[0] offset 2" in str(failure)


# -- what predict_agent refuses ---------------------------------------------------------------


def app(**settings: Any) -> Any:
    return faust.App("unit", broker="kafka://127.0.0.1:1", web_enabled=False, **settings)


def test_faust_exactly_once_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ConfigError, match=r"at_least_once.*pipeline run --guarantee exactly-once"):
        predict_agent(app(processing_guarantee="exactly_once"), "in", "out", models=ROOT / "models")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"models": "/no/such/store"}, "model store root must be an existing directory"),
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_in_flight": 10}, r"max_in_flight must be at least max_batch_size \(256\), got 10"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number from 0 to 60000, got -1"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        predict_agent(app(), "in", "out", **{"models": ROOT / "models", **settings})


def test_the_agent_is_registered_on_the_app_with_its_dead_letter_topic() -> None:
    faust_app = app()
    agent = predict_agent(faust_app, "features", "predictions", models=ROOT / "models")

    assert agent in faust_app.agents.values()
    assert agent.name == "predict-features"


def test_the_example_app_builds_with_predict_agent_beside_its_own_agents() -> None:
    spec = importlib.util.spec_from_file_location(
        "faust_predict", ROOT / "examples/faust_predict.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    names = sorted(agent.name for agent in example.app.agents.values())
    assert len(names) == 3 and "predict-features" in names

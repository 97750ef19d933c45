"""The session broker is a real Kafka: a keyed record produced is consumed back unchanged."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, Producer


def test_produce_and_consume_round_trip(
    kafka_bootstrap: str, make_topic: Callable[..., str], make_group: Callable[[], str]
) -> None:
    topic = make_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f'{{"id": "{i}"}}'.encode() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic, value=value, key=key, headers=[("h", b"v")])
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": make_group(),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: dict[bytes, bytes] = {}
    try:
        for _ in range(60):
            for msg in consumer.consume(100, timeout=1.0):
                assert msg.error() is None
                assert msg.headers() == [("h", b"v")]
                got[msg.key()] = msg.value()
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent

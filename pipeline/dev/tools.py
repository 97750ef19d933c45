"""`pipeline produce` and `pipeline consume`: the command-line ends of the topics.

`produce` sends JSON-lines events from a file or stdin, or synthetic events for an example
model (real rows of the breast cancer data set, cycled), open loop at ``--rate`` events/s.
`consume` prints a topic's records as JSON lines, dead-letter headers included.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from pipeline.errors import ConfigError, KafkaError

__all__ = ["consume", "produce", "synthetic_events"]

_PROGRESS_EVERY_S = 2.0


def _sample_rows() -> list[list[float]]:
    text = (resources.files("pipeline.dev") / "_data" / "breast_cancer_rows.json").read_text()
    rows: list[list[float]] = json.loads(text)["rows"]
    return rows


def synthetic_events(
    model: str | None, *, count: int, run_id: str | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(key, value)`` events with real 30-feature rows, for the example models.

    Ids are ``<run_id>-<n>``, unique per run; keys cycle over 1,000 entity ids.
    """
    rows = _sample_rows()
    run_id = run_id or uuid.uuid4().hex[:8]
    for n in range(count):
        event: dict[str, Any] = {"id": f"{run_id}-{n}", "features": rows[n % len(rows)]}
        if model:
            event["model"] = model
        yield f"entity-{n % 1000}".encode(), orjson.dumps(event)


def _file_events(
    stream: TextIO, key_field: str | None, count: int | None
) -> Iterator[tuple[bytes | None, bytes]]:
    sent = 0
    for line in stream:
        line = line.strip()
        if not line:
            continue
        if count is not None and sent >= count:
            return
        key: bytes | None = None
        if key_field:
            try:  # a line that is not a JSON object is still sent, without a key
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = None
            raw_key = value.get(key_field) if isinstance(value, dict) else None
            key = None if raw_key is None else str(raw_key).encode()
        sent += 1
        yield key, line.encode()


def produce(
    *,
    bootstrap_servers: str,
    topic: str,
    kafka: Mapping[str, str],
    source: TextIO | None = None,
    synthetic: str | None = None,
    count: int | None = None,
    rate: float | None = None,
    key_field: str | None = "id",
    out: TextIO = sys.stderr,
) -> int:
    """Send events and wait for every acknowledgement; return how many were delivered.

    Raises:
        KafkaError: deliveries failed.
    """
    if synthetic is None and source is None:
        raise ConfigError("produce needs --file PATH, --file - for stdin, or --synthetic MODEL")
    if synthetic is not None and count is None:
        count = 1000
    events = (
        synthetic_events(synthetic or None, count=count or 0)
        if synthetic is not None
        else _file_events(source or sys.stdin, key_field, count)
    )
    producer = Producer({"linger.ms": 5, "enable.idempotence": True, **kafka,
                         "bootstrap.servers": bootstrap_servers})  # fmt: skip
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    last_progress = started
    sent = 0
    for key, value in events:
        if rate:
            _wait_until(started + sent / rate)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        producer.poll(0)
        if time.monotonic() - last_progress >= _PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            print(
                f"produce: sent {sent} events ({sent / (last_progress - started):.0f}/s)", file=out
            )
    remaining = producer.flush(60)
    elapsed = time.monotonic() - started
    delivered_count = sent - len(failed) - remaining
    print(f"produce: sent {delivered_count} events to {topic} in {elapsed:.2f} s", file=out)
    if failed or remaining:
        raise KafkaError(
            f"{len(failed) + remaining} of {sent} events were not delivered to {topic} "
            f"(first error: {failed[0] if failed else 'timed out'}); check the broker and topic"
        )
    return delivered_count


def _wait_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0.0005:
        time.sleep(delay)


def _record(msg: Any) -> dict[str, Any]:
    value = msg.value()
    try:
        shown: Any = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        shown = value.decode("utf-8", "replace")
    key = msg.key()
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": msg.timestamp()[1],
        "key": None if key is None else key.decode("utf-8", "replace"),
        "value": shown,
        "headers": {k: (v.decode("utf-8", "replace") if v is not None else None)
                    for k, v in (msg.headers() or [])},
    }  # fmt: skip


def consume(
    *,
    bootstrap_servers: str,
    topic: str,
    kafka: Mapping[str, str],
    count: int | None = None,
    from_beginning: bool = False,
    timeout_s: float = 10.0,
    isolation: str = "read_committed",
    out: TextIO = sys.stdout,
) -> int:
    """Print records as JSON lines until `count`, or `timeout_s` with no record; return how many."""
    consumer = Consumer(
        {
            "group.id": f"pipeline-consume-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            **kafka,
            "bootstrap.servers": bootstrap_servers,
        }
    )
    printed = 0
    consumer.subscribe([topic])
    idle_deadline = time.monotonic() + timeout_s
    try:
        while (count is None or printed < count) and time.monotonic() < idle_deadline:
            for msg in consumer.consume(100 if count is None else min(100, count - printed), 0.2):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaError(f"consume from {topic} failed: {err}")
                    continue
                out.write(orjson.dumps(_record(msg)).decode() + "\n")
                printed += 1
                idle_deadline = time.monotonic() + timeout_s
            out.flush()
    except KafkaException as exc:
        raise KafkaError(f"consume from {topic} failed: {exc.args[0]}") from exc
    finally:
        consumer.close()
    return printed


def open_source(path: str | None) -> TextIO | None:
    """``-`` is stdin, a path is opened, None is None."""
    if path is None:
        return None
    if path == "-":
        return sys.stdin
    try:
        return Path(path).open()
    except OSError as exc:
        raise ConfigError(f"cannot read events file {path}: {exc.strerror}") from exc

"""`pipeline produce`: the command-line end of the input topics.

`produce` sends JSON-lines events from a file or stdin, or synthetic events for an example
model (real rows of the breast cancer data set, cycled), open loop at ``--rate`` events/s.
As with kcat -P, ``-K DELIM`` takes each line's key from before the first DELIM, ``-H
name=value`` adds a header to every record and ``--partition`` picks the partition; without
``-K`` a JSON event's ``--key-field`` (``id``) is the key. `pipeline consume` is in
`pipeline.dev.consume`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import orjson
from confluent_kafka import KafkaException, Producer

from pipeline.errors import ConfigError, DeliveryFailed
from pipeline.kafka.clientlog import client_settings
from pipeline.kafka.topics import reach

__all__ = ["Record", "feature_event_schema", "parse_headers", "produce", "synthetic_events"]

_PROGRESS_EVERY_S = 2.0


def feature_event_schema() -> dict[str, Any]:
    """The event contract as an Avro record (``schemas/feature-event.avsc``): what the demo
    and the benchmark frame events with, and a producer's starting point."""
    text = (resources.files("pipeline.dev") / "_data" / "feature-event.avsc").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


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


Record = tuple[bytes | None, bytes]


def _file_events(
    stream: TextIO, keys: _Keys, count: int | None
) -> Iterator[tuple[bytes | None, bytes]]:
    sent = 0
    for line in stream:
        line = line.strip()
        if not line:
            continue
        if count is not None and sent >= count:
            return
        sent += 1
        yield keys.split(line)


@dataclass(frozen=True, slots=True)
class _Keys:
    """Where a line's key comes from: before ``-K``'s delimiter, or a JSON field."""

    delimiter: str | None
    field: str | None

    def split(self, line: str) -> Record:
        if self.delimiter is not None:
            key, sep, value = line.partition(self.delimiter)
            return (key.encode(), value.encode()) if sep else (None, line.encode())
        if not self.field:
            return None, line.encode()
        try:  # a line that is not a JSON object is still sent, without a key
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        raw_key = event.get(self.field) if isinstance(event, dict) else None
        return (None if raw_key is None else str(raw_key).encode()), line.encode()


def parse_headers(pairs: Sequence[str]) -> list[tuple[str, bytes]]:
    """``-H name=value`` flags as Kafka headers, in order (a name may repeat).

    Raises:
        ConfigError: a pair has no ``=`` or an empty name.
    """
    headers = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"-H takes name=value, got {pair!r}")
        headers.append((name, value.encode()))
    return headers


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
    key_delimiter: str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
    encode: Callable[[bytes], bytes] | None = None,
    out: TextIO = sys.stderr,
) -> int:
    """Send events and wait for every acknowledgement; return how many were delivered.

    Args:
        key_field: A JSON line's field that is its key (without `key_delimiter`).
        key_delimiter: Each line is KEY, this delimiter, VALUE (kcat -K).
        headers: Added to every record.
        partition: Every record goes to this partition (default: by key).
        encode: Turns each JSON value into the value sent (``--value-format avro``).

    Raises:
        ConfigError: no source, or a key delimiter with synthetic events.
        BrokerUnreachable: no broker answered.
        DeliveryFailed: deliveries failed.
    """
    if synthetic is None and source is None:
        raise ConfigError("produce needs --file PATH, --file - for stdin, or --synthetic MODEL")
    if synthetic is not None and key_delimiter is not None:
        raise ConfigError("-K splits the lines of --file; synthetic events have their own keys")
    if synthetic is not None and count is None:
        count = 1000
    events = (
        synthetic_events(synthetic or None, count=count or 0)
        if synthetic is not None
        else _file_events(source or sys.stdin, _Keys(key_delimiter, key_field), count)
    )
    if encode is not None:
        events = ((key, encode(value)) for key, value in events)
    where: dict[str, Any] = {"headers": list(headers) or None}
    if partition is not None:
        where["partition"] = partition
    producer = Producer(
        {"linger.ms": 5, "enable.idempotence": True, **client_settings(bootstrap_servers, kafka)}
    )
    reach(producer, bootstrap_servers)  # an unreachable broker: one line, exit 4, not 60 s
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
                producer.produce(topic, value, key, on_delivery=delivered, **where)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:  # the producer knows at once: no such partition
                producer.flush(10)
                raise DeliveryFailed(
                    f"event {sent + 1} could not be sent to {topic} ({exc.args[0]}); "
                    f"{sent - len(failed) - len(producer)} sent before it; check the "
                    "topic and --partition"
                ) from exc
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
        raise DeliveryFailed(
            f"{len(failed) + remaining} of {sent} events were not delivered to {topic} "
            f"(first error: {failed[0] if failed else 'timed out'}); check the broker and topic"
        )
    return delivered_count


def _wait_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0.0005:
        time.sleep(delay)


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

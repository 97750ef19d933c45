"""`make demo`: the main job, end to end, on the embedded local broker.

Starts a real Apache Kafka broker (`pipeline kafka start`), starts a worker
(`pipeline run`), produces a few thousand example events for the three example models
plus a few bad ones, shows some predictions and dead letters as they arrive, checks that
every event ended as exactly one prediction or one dead-letter record, prints the
worker's stats, and stops what it started.

With ``--avro`` (`make demo-avro`) it also starts a Schema Registry (`pipeline
schema-registry start`), produces the events as framed Avro values, as a producer using
Confluent's ``AvroSerializer`` does (the bad ones stay JSON text, and one framed value
names a schema id the registry does not know), runs the worker with ``--value-format
auto --output-format avro``, and reads the predictions back with a plain
``AvroDeserializer``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import orjson
from confluent_kafka import Consumer, Producer

from pipeline.dev.localkafka import LocalKafka
from pipeline.dev.localregistry import LocalRegistry
from pipeline.dev.tools import feature_event_schema, synthetic_events
from pipeline.engine.framing import FRAME_HEADER_BYTES, frame_header
from pipeline.errors import PipelineError
from pipeline.kafka.topics import admin_client, ensure_topics

__all__ = ["main"]

MODELS = ("breast-cancer-mlp", "breast-cancer-logreg", "breast-cancer-gbt")
BAD_EVENTS: tuple[tuple[str, bytes], ...] = (
    ("bad-json", b'{"id": "demo-bad-1", "features": [1, 2'),
    ("bad-count", b'{"id": "demo-bad-2", "model": "breast-cancer-mlp", "features": [1.0, 2.0]}'),
    ("bad-model", b'{"id": "demo-bad-3", "model": "../etc/passwd", "features": [1.0]}'),
)
_ROOT = Path(__file__).resolve().parents[2]
_UNKNOWN_SCHEMA_ID = 987_654_321


def _say(text: str) -> None:
    print(f"demo | {text}", flush=True)


def _relay(stream: IO[bytes], prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix}{line.decode(errors='replace')}")
        sys.stdout.flush()


@contextlib.contextmanager
def _broker(data_dir: Path, port: int) -> Iterator[str]:
    broker = LocalKafka(data_dir=data_dir, progress=_say)
    if broker.running() is None:
        shutil.rmtree(data_dir, ignore_errors=True)  # a fresh cluster for every demo run
    started_at = time.monotonic()
    info, started = broker.start(port=port)
    how = "started" if started else "already running"
    _say(f"Kafka broker {how} at {info.bootstrap} ({time.monotonic() - started_at:.1f} s)")
    try:
        yield info.bootstrap
    finally:
        if started:
            broker.stop()
            _say("Kafka broker stopped")


@contextlib.contextmanager
def _registry(data_dir: Path) -> Iterator[str]:
    """A Schema Registry of the demo's own, on a free port; yields its URL."""
    registry = LocalRegistry(data_dir)
    started_at = time.monotonic()
    info, started = registry.start(port=0)  # a free port
    how = "started" if started else "already running"
    _say(f"Schema Registry {how} at {info.url} ({time.monotonic() - started_at:.1f} s)")
    try:
        yield info.url
    finally:
        if started:
            registry.stop()
            _say("Schema Registry stopped")


@contextlib.contextmanager
def _worker(
    bootstrap: str, models: Path, extra: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable, "-m", "pipeline", "run", "--bootstrap-servers", bootstrap,
        "--input-topic", "features", "--output-topic", "predictions",
        "--group-id", "demo", "--models", str(models),
        "--default-model", "breast-cancer-mlp", "--stats-interval-s", "2", *extra,
    ]  # fmt: skip
    _say("starting: pipeline run " + " ".join(cmd[4:]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    relay = threading.Thread(target=_relay, args=(proc.stdout, "worker | "), daemon=True)
    relay.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        relay.join(5)
        _say(f"worker exited with code {code}")


def _produce(
    bootstrap: str, run_id: str, count: int, frame: Callable[[bytes], bytes] | None = None
) -> tuple[list[str], int]:
    """Produce the events (each framed as Avro by `frame`, if given) and the bad ones;
    return the good events' ids and how many bad ones were sent."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    ids = []
    per_model = count // len(MODELS)
    for model in MODELS:
        for key, value in synthetic_events(model, count=per_model, run_id=f"{run_id}-{model}"):
            producer.produce("features", frame(value) if frame else value, key)
            producer.poll(0)
            ids.append(orjson.loads(value)["id"])
    for name, bad in BAD_EVENTS:
        producer.produce("features", bad.replace(b"demo-bad", run_id.encode()), name.encode())
    bad_count = len(BAD_EVENTS)
    if frame is not None:  # a framed value whose schema id the registry does not know
        good = frame(orjson.dumps({"id": f"{run_id}-unknown-schema", "features": [1.0]}))
        unknown = frame_header(_UNKNOWN_SCHEMA_ID) + good[FRAME_HEADER_BYTES:]
        producer.produce("features", unknown, b"unknown-schema")
        bad_count += 1
    producer.flush(30)
    return ids, bad_count


def _text(raw: str | bytes | None) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")


def _collect(
    bootstrap: str,
    run_id: str,
    expected: int,
    timeout_s: float,
    read: Callable[[bytes], dict[str, Any]] = orjson.loads,
) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe(["predictions", "predictions.dlq"])
    seen: dict[str, int] = {}
    shown = dead = 0
    first_at: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() or run_id.encode() not in (msg.value() or b""):
                    continue
                first_at = first_at or time.monotonic()
                if msg.topic() == "predictions":
                    event = read(msg.value() or b"{}")
                    seen[event["id"]] = seen.get(event["id"], 0) + 1
                    if shown < 5:
                        shown += 1
                        _say(f"prediction key={_text(msg.key())} {event}")
                else:
                    dead += 1
                    seen[f"dlq-{msg.partition()}-{msg.offset()}"] = 1
                    h = {k: _text(v) for k, v in cast(list[tuple[str, Any]], msg.headers() or [])}
                    _say(
                        f"dead letter key={_text(msg.key())} stage={h['pipeline.error.stage']} "
                        f"type={h['pipeline.error.type']}: {h['pipeline.error.message']}"
                    )
    finally:
        consumer.close()
    duplicates = sum(n - 1 for n in seen.values())
    return {"outputs": len(seen), "dead": dead, "duplicates": duplicates, "first_at": first_at}


def _drive(
    bootstrap: str,
    run_id: str,
    events: int,
    worker: subprocess.Popen[bytes],
    registry: str | None,
) -> tuple[dict[str, Any], float, int]:
    frame, read = _avro(registry) if registry else (None, orjson.loads)
    started = time.monotonic()
    ids, bad = _produce(bootstrap, run_id, events, frame)
    total = len(ids) + bad
    form = " as framed Avro" if frame else ""
    _say(f"produced {len(ids)} events{form} for {', '.join(MODELS)} and {bad} bad ones")
    result = _collect(bootstrap, run_id, total, timeout_s=60, read=read)
    result["started"] = started
    took = time.monotonic() - started
    if worker.poll() is not None:
        raise PipelineError(f"the worker exited early with code {worker.returncode}")
    time.sleep(2.5)  # let the worker print one more stats line
    return result, took, total


def _avro(
    url: str,
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], dict[str, Any]]]:
    """Frame JSON events as Avro (registering ``schemas/feature-event.avsc`` under
    ``features-value``),
    and read Avro predictions with a plain `AvroDeserializer`."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": url})
    serializer = AvroSerializer(client, orjson.dumps(feature_event_schema()).decode())
    deserializer = AvroDeserializer(client)
    events = SerializationContext("features", MessageField.VALUE)
    predictions = SerializationContext("predictions", MessageField.VALUE)

    def frame(value: bytes) -> bytes:
        return cast(bytes, serializer(orjson.loads(value), events))

    def read(value: bytes) -> dict[str, Any]:
        return cast(dict[str, Any], deserializer(value, predictions))

    return frame, read


def run(*, port: int, data_dir: Path, events: int, models: Path, avro: bool = False) -> int:
    """Run the demo; return 0 if every event ended as exactly one prediction or dead letter."""
    run_id = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(_broker(data_dir, port))
        registry = stack.enter_context(_registry(data_dir / "registry")) if avro else None
        topics = ["features", "predictions", "predictions.dlq"]
        ensure_topics(admin_client(bootstrap, {}), bootstrap, topics, create=True, partitions=4)
        _say(f"topics {', '.join(topics)} ready (4 partitions each)")
        extra = ("--value-format", "auto", "--output-format", "avro",
                 "--schema-registry-url", registry) if registry else ()  # fmt: skip
        with _worker(bootstrap, models, extra) as worker:
            result, took, total = _drive(bootstrap, run_id, events, worker, registry)
    first = result["first_at"]
    _say(
        f"{total} events in -> {result['outputs'] - result['dead']} predictions + "
        f"{result['dead']} dead letters, {result['duplicates']} duplicates, in {took:.1f} s"
        + (
            f" (first output {first - result['started']:.2f} s after producing began)"
            if first
            else ""
        )
    )
    ok = result["outputs"] == total and result["duplicates"] == 0
    _say("every event ended as exactly one prediction or dead letter" if ok else "MISMATCH")
    _say(try_it_yourself(port, avro=avro))
    return 0 if ok else 1


def try_it_yourself(port: int, *, avro: bool = False) -> str:
    """The closing hint: the same job by hand, on the demo's port."""
    kafka = f"--bootstrap-servers 127.0.0.1:{port}"
    registry = ".venv/bin/pipeline schema-registry start --port 8081, " if avro else ""
    formats = (
        " --value-format auto --output-format avro "
        "--schema-registry-url http://127.0.0.1:8081/apis/ccompat/v7"
        if avro
        else ""
    )
    return (
        f"try it yourself: .venv/bin/pipeline kafka start --port {port}, {registry}"
        f".venv/bin/pipeline run {kafka} --default-model breast-cancer-mlp{formats}, "
        f".venv/bin/pipeline produce {kafka} --synthetic breast-cancer-mlp --count 1000, "
        f".venv/bin/pipeline consume {kafka} --from-beginning (it follows the topic: Ctrl-C "
        "stops it)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.dev.demo [--port 9092] [--data-dir DIR] [--events N] [--avro]`."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--data-dir", type=Path, default=_ROOT / ".cache" / "kafka-demo")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--models", type=Path, default=_ROOT / "models")
    parser.add_argument(
        "--avro",
        action="store_true",
        help="events and predictions as framed Avro values, with a Schema Registry of its own",
    )
    args = parser.parse_args(argv)
    try:
        return run(
            port=args.port,
            data_dir=args.data_dir,
            events=args.events,
            models=args.models,
            avro=args.avro,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the broker and the worker were stopped on the way out
        print("demo stopped (Ctrl-C); its worker and broker are stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Schema Registry framed JSON Schema values through the Kafka worker, written by
confluent-kafka's own `JSONSerializer` against a real registry and a real broker:
predictions equal the JSON text path's, under ``jsonschema`` and ``auto``; a value of
another schema type, or whose payload is not JSON, is one dead letter with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from .conftest import Pipeline, framer
from .kafkaio import good_events, read_all, send

ROOT = Path(__file__).resolve().parents[2]
# The event contract's own JSON Schema: what a team with one already registers.
EVENT_SCHEMA = (ROOT / "schemas/feature-event.schema.json").read_text()


def _framer(client: SchemaRegistryClient, topic: str) -> Callable[[dict[str, Any]], bytes]:
    return framer(JSONSerializer(EVENT_SCHEMA, client), topic)  # it validates each event


@pytest.mark.parametrize("value_format", ["jsonschema", "auto"])
def test_json_schema_events_predict_as_their_json_twins(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
    value_format: str,
) -> None:
    p = make_pipeline(partitions=2)
    frame = _framer(registry, p.input)
    events: list[tuple[bytes, bytes]] = []
    for i, (key, value) in enumerate(good_events(100, run="twin")):
        events.append((key, value))  # JSON text, id twin-i
        events.append((key, frame({**orjson.loads(value), "id": f"framed-{i}"})))
    framed = [v for _, v in events[1::2]]
    assert all(v[0] == 0 and v[5:6] == b"{" for v in framed)  # the frame, then JSON text
    if value_format == "jsonschema":
        events = events[1::2]  # every value framed
    send(p.bootstrap, p.input, events)

    worker = p.start_worker("--value-format", value_format,
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert [r for r in out if r.topic == p.dlq] == []
    predictions = {r.json["id"]: r.json for r in out}
    assert len(predictions) == len(out) == len(events)  # each event once
    for i in range(100):
        assert predictions[f"framed-{i}"]["model"] == "breast-cancer-mlp"
        if value_format == "auto":  # the JSON text twin is there too
            assert predictions[f"framed-{i}"]["outputs"] == predictions[f"twin-{i}"]["outputs"]


def test_an_avro_value_or_a_payload_that_is_not_json_is_one_dead_letter(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    p = make_pipeline(partitions=1)
    frame = _framer(registry, p.input)
    good = [(k, frame(orjson.loads(v))) for k, v in good_events(20, run="ok")]
    avro = AvroSerializer(registry, json.dumps(
        {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}))  # fmt: skip
    bad = {
        b"avro": avro({"id": "a"}, SerializationContext(f"{p.input}-avro", MessageField.VALUE)),
        b"not-json": good[0][1][:5] + b"{not json",
    }
    send(p.bootstrap, p.input, [*good[:10], *bad.items(), *good[10:]])

    worker = p.start_worker("--value-format", "jsonschema",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(good) + len(bad))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert len([r for r in out if r.topic == p.output]) == len(good)
    dead = {r.key: r for r in out if r.topic == p.dlq}
    assert sorted(dead) == sorted(bad)
    for key, value in bad.items():
        assert dead[key].value == value  # the original bytes
        assert dead[key].headers["pipeline.error.type"] == b"InvalidJson"
    said = {k: (dead[k].headers["pipeline.error.message"] or b"").decode() for k in bad}
    assert (
        "has schema type AVRO" in said[b"avro"] and "--value-format avro or auto" in said[b"avro"]
    )
    assert "is not JSON text" in said[b"not-json"]


def test_predictions_as_json_schema_values_are_read_by_a_plain_json_deserializer(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    """--output-format jsonschema: each prediction is the frame of the prediction contract's
    schema, registered under <output topic>-value, then the JSON text --output-format json
    writes; confluent-kafka's JSONDeserializer, given no schema of its own, fetches the
    writer's schema by id and validates every prediction against it."""
    p = make_pipeline(partitions=2)
    events = good_events(60, run="out")
    send(p.bootstrap, p.input, events)

    worker = p.start_worker("--output-format", "jsonschema",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert all(r.topic == p.output for r in out)
    subject = registry.get_latest_version(f"{p.output}-value")
    assert subject.schema.schema_type == "JSON"
    read = JSONDeserializer(None, schema_registry_client=registry)
    ctx = SerializationContext(p.output, MessageField.VALUE)
    ids = set()
    for record in out:
        assert record.value is not None
        assert (
            record.value[0] == 0 and int.from_bytes(record.value[1:5], "big") == subject.schema_id
        )
        prediction = read(record.value, ctx)  # validates against the registered schema
        assert prediction == orjson.loads(record.value[5:])
        assert prediction["model"] == "breast-cancer-mlp" and record.key is not None
        ids.add(prediction["id"])
    assert ids == {orjson.loads(v)["id"] for _, v in events}


def test_pipeline_produce_frames_json_schema_values_the_worker_predicts(
    make_pipeline: Callable[..., Pipeline], schema_registry_url: str
) -> None:
    """`pipeline produce --value-format jsonschema --schema schemas/feature-event.schema.json`
    frames with confluent-kafka's JSONSerializer, which validates each event: one that breaks
    the contract stops it with exit 3 and the reason."""
    p = make_pipeline(partitions=2)

    def produce(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "produce", "--bootstrap-servers", p.bootstrap,
             "--topic", p.input, "--value-format", "jsonschema", "--schema",
             str(ROOT / "schemas/feature-event.schema.json"),
             "--schema-registry-url", schema_registry_url, *args],
            capture_output=True, text=True, input=stdin, timeout=120, check=False,
        )  # fmt: skip

    sent = produce("--synthetic", "breast-cancer-logreg", "--count", "50")
    assert sent.returncode == 0, sent.stderr
    unfit = produce("--file", "-", stdin='{"id": "x", "features": "not a vector"}\n')
    assert unfit.returncode == 3, unfit.stderr
    assert "event 1 does not fit the JSON schema" in unfit.stderr
    assert "Traceback" not in unfit.stderr, unfit.stderr

    worker = p.start_worker("--value-format", "jsonschema",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=50)
    code, _ = worker.stop()
    assert code == 0, worker.log
    ids = [r.json["id"] for r in out if r.topic == p.output]
    assert len(ids) == len(set(ids)) == 50 and len(out) == 50  # each event once, no dead letter

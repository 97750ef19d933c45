"""Schema Registry framed Protobuf values through the Kafka worker, against a real registry
and a real broker: events framed by `pipeline produce` (the .proto text registered, as
Java and Go serializers do) and by confluent-kafka's own `ProtobufSerializer` (a base64
descriptor registered) predict as their JSON twins; a typed model's named inputs come
from a nested message, and a producer adding a field mid-stream costs nothing; each bad
value is one dead letter with its reason; predictions written as Protobuf messages are
read by confluent-kafka's `ProtobufDeserializer`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.protoschema import compile_schema, message_data
from pipeline.schemaregistry import protobuf_encoder

from .conftest import Pipeline, framer
from .kafkaio import good_events, read_all, send

ROOT = Path(__file__).resolve().parents[2]
EVENT_PROTO = ROOT / "schemas/feature-event.proto"
PAYMENT_PROTO = ROOT / "schemas/examples/payment.proto"


def _produce(p: Pipeline, url: str, schema: Path, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "produce", "--bootstrap-servers", p.bootstrap,
         "--topic", p.input, "--value-format", "protobuf", "--schema", str(schema),
         "--schema-registry-url", url, *args],
        capture_output=True, text=True, input=stdin, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("value_format", ["protobuf", "auto"])
def test_protobuf_events_predict_as_their_json_twins(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
    value_format: str,
) -> None:
    p = make_pipeline(partitions=2)
    events = good_events(60, run="twin")
    texts = "".join(orjson.dumps({**orjson.loads(v), "id": f"text-{i}"}).decode() + "\n"
                    for i, (_, v) in enumerate(events))  # fmt: skip
    sent = _produce(p, schema_registry_url, EVENT_PROTO, "--file", "-", stdin=texts)
    assert sent.returncode == 0, sent.stderr
    message = compile_schema(EVENT_PROTO.read_text()).message_class([0])
    serializer = ProtobufSerializer(message, registry, {"use.deprecated.format": False})
    frame = framer(serializer, f"{p.input}-b64")  # its own subject: a base64 descriptor
    b64 = [(k, frame(message(**{**orjson.loads(v), "id": f"b64-{i}"})))
           for i, (k, v) in enumerate(events)]  # fmt: skip
    send(p.bootstrap, p.input, b64 + (events if value_format == "auto" else []))
    expected = len(events) * (3 if value_format == "auto" else 2)

    worker = p.start_worker("--value-format", value_format,
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=expected)
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert [r for r in out if r.topic == p.dlq] == []
    predictions = {r.json["id"]: r.json for r in out}
    assert len(predictions) == len(out) == expected  # each event once
    for i in range(len(events)):
        for framed in (f"text-{i}", f"b64-{i}"):
            assert predictions[framed]["model"] == "breast-cancer-mlp"
            if value_format == "auto":  # the JSON text twin is there too
                assert predictions[framed]["outputs"] == predictions[f"twin-{i}"]["outputs"]


def test_a_typed_models_inputs_come_from_a_nested_message_and_a_new_field_costs_nothing(
    make_pipeline: Callable[..., Pipeline], schema_registry_url: str, tmp_path: Path
) -> None:
    """card-fraud's named inputs (FP64, INT64, two BYTES) from schemas/examples/payment.proto;
    midway the producer registers a version with one more field (merchant), and every event
    of either version predicts as its JSON twin, with no dead letter."""
    p = make_pipeline(partitions=1)
    v1 = protobuf_encoder(schema_registry_url, {}, PAYMENT_PROTO, p.input)
    evolved = PAYMENT_PROTO.read_text().replace(
        "  Features features = 4;\n", "  Features features = 4;\n  string merchant = 5;\n"
    )
    v2_file = tmp_path / "payment-v2.proto"
    v2_file.write_text(evolved)
    v2 = protobuf_encoder(schema_registry_url, {}, v2_file, p.input)
    rows = [{"amount": 12.5 + i, "hour": i % 24, "country": ["DE", "US", "FR"][i % 3],
             "channel": ["web", "pos"][i % 2]} for i in range(40)]  # fmt: skip
    json_events, framed = [], []
    for i, row in enumerate(rows):
        event = {"id": f"pay-{i}", "model": "card-fraud", "card_id": f"c{i}", "features": row}
        json_events.append((b"k", orjson.dumps({**event, "id": f"json-{i}"})))
        encode, extra = (v1, {}) if i < 20 else (v2, {"merchant": "m-1"})
        framed.append((b"k", encode(orjson.dumps({**event, **extra}))))
    ids_v1 = {int.from_bytes(v[1:5], "big") for _, v in framed[:20]}
    ids_v2 = {int.from_bytes(v[1:5], "big") for _, v in framed[20:]}
    assert len(ids_v1) == len(ids_v2) == 1 and ids_v1 != ids_v2  # two schema versions
    send(p.bootstrap, p.input, [*json_events, *framed])

    worker = p.start_worker("--value-format", "auto",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(json_events) + len(framed))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert [r for r in out if r.topic == p.dlq] == []
    predictions = {r.json["id"]: r.json for r in out}
    for i in range(len(rows)):
        assert predictions[f"pay-{i}"]["label"] == predictions[f"json-{i}"]["label"]
        assert predictions[f"pay-{i}"]["outputs"] == predictions[f"json-{i}"]["outputs"]


def test_each_bad_protobuf_value_is_one_dead_letter_and_the_rest_predict(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    p = make_pipeline(partitions=1)
    encode = protobuf_encoder(schema_registry_url, {}, EVENT_PROTO, p.input)
    good = [(k, encode(v)) for k, v in good_events(20, run="ok")]
    header = good[0][1][:5]
    avro = AvroSerializer(registry, orjson.dumps(
        {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}).decode())  # fmt: skip
    bad = {
        b"unknown-id": b"\x00" + (10**6).to_bytes(4, "big") + good[0][1][5:],
        b"magic-1": b"\x01" + good[0][1][1:],
        b"cut-indexes": header + b"\x04",  # two indexes announced, none there
        b"no-such-message": header + b"\x02\x06" + good[0][1][6:],  # message 3 of one
        b"corrupt": header + b"\x00\x0a\xff\xff",  # a string field longer than the value
        b"avro": avro({"id": "a"}, SerializationContext(f"{p.input}-avro", MessageField.VALUE)),
        b"no-id": header + b"\x00" + b"\x29" + b"\x00" * 8,  # features only: id is ""
    }
    send(p.bootstrap, p.input, [*good[:10], *bad.items(), *good[10:]])

    worker = p.start_worker("--value-format", "protobuf",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(good) + len(bad))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert len([r for r in out if r.topic == p.output]) == len(good)
    dead = {r.key: r for r in out if r.topic == p.dlq}
    assert sorted(dead) == sorted(bad)
    types = {k: dead[k].headers["pipeline.error.type"] for k in bad}
    said = {k: (dead[k].headers["pipeline.error.message"] or b"").decode() for k in bad}
    for key, value in bad.items():
        assert dead[key].value == value  # the original bytes
    assert types[b"unknown-id"] == b"UnknownSchema" and "1000000" in said[b"unknown-id"]
    assert types[b"magic-1"] == b"UnknownMagicByte"
    assert types[b"cut-indexes"] == b"TruncatedFrame"
    assert types[b"no-such-message"] == b"InvalidProtobuf" and "holds 1" in said[b"no-such-message"]
    assert types[b"corrupt"] == b"InvalidProtobuf"
    assert "pipeline.event.FeatureEvent" in said[b"corrupt"]
    assert types[b"avro"] == b"InvalidProtobuf" and "schema type AVRO" in said[b"avro"]
    assert types[b"no-id"] == b"InvalidField" and "id" in said[b"no-id"]


def test_predictions_as_protobuf_messages_are_read_by_protobuf_deserializer(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    """--output-format protobuf: schemas/prediction-message.proto registered as its text under
    <output topic>-value; each prediction framed with its id and message index 0, read by
    confluent-kafka's ProtobufDeserializer with a class compiled from the registered text,
    and equal to the JSON prediction of the same event."""
    p, twin = make_pipeline(partitions=2), make_pipeline(partitions=2)
    events = good_events(40, run="out")
    send(p.bootstrap, twin.input, events)
    json_worker = twin.start_worker()
    as_json = read_all(twin.bootstrap, [twin.output], expect=len(events))
    assert json_worker.stop()[0] == 0
    send(p.bootstrap, p.input, events)

    worker = p.start_worker("--output-format", "protobuf",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert all(r.topic == p.output for r in out)
    registered = registry.get_latest_version(f"{p.output}-value")
    assert registered.schema.schema_type == "PROTOBUF"
    assert "message Prediction" in (registered.schema.schema_str or "")
    message = compile_schema(registered.schema.schema_str or "").message_class([0])
    read = ProtobufDeserializer(message, {"use.deprecated.format": False})
    ctx = SerializationContext(p.output, MessageField.VALUE)
    by_id = {r.json["id"]: r.json for r in as_json}
    seen = []
    for record in out:
        assert record.value is not None
        assert int.from_bytes(record.value[1:5], "big") == registered.schema_id
        prediction = message_data(read(record.value, ctx), top=False)
        seen.append(prediction["id"])
        json_twin = by_id[prediction["id"]]
        assert prediction["model"] == json_twin["model"]
        assert prediction["label"] == json_twin["label"]
        assert prediction["score"] == pytest.approx(json_twin["score"])
        assert prediction["prediction_id"].startswith(f"{p.input}/")
        assert prediction["ts"] > 0 and record.key is not None  # the record's timestamp
        for name, value in json_twin["outputs"].items():
            out_value = prediction["outputs"][name]
            flat = out_value["numbers"] or out_value["integers"]
            assert flat == pytest.approx(value if isinstance(value, list) else [value])
    assert sorted(seen) == sorted(orjson.loads(v)["id"] for _, v in events)  # each once

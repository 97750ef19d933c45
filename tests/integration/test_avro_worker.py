"""Schema Registry framed Avro values through the Kafka worker, against a real registry and
a real broker: predictions equal the JSON path's, a schema that evolves mid-stream costs
nothing, each bad value is one dead letter with its reason, and a registry that does not
answer at start stops the worker with its own exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.dev.localregistry import LocalRegistry, missing_tools
from pipeline.exitcodes import CONFIG, REGISTRY_UNREACHABLE

from .conftest import Pipeline, framer
from .kafkaio import free_port, good_events, read_all, send, wait_for_outputs
from .test_share import lock_for, share_groups_supported

V1 = {
    "type": "record",
    "name": "FeatureEvent",
    "namespace": "example",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "model", "type": ["null", "string"], "default": None},
        {"name": "features", "type": {"type": "array", "items": "double"}},
    ],
}
# A producer adds an optional field mid-stream (BACKWARD compatible: a new schema id).
V2 = {
    **V1,
    "fields": [*V1["fields"], {"name": "source", "type": ["null", "string"], "default": None}],
}
NO_FEATURES = {"type": "record", "name": "NotAnEvent", "fields": [{"name": "id", "type": "string"}]}


def _framer(
    client: SchemaRegistryClient, topic: str, schema: dict[str, Any]
) -> Callable[[dict[str, Any]], bytes]:
    return framer(AvroSerializer(client, json.dumps(schema)), topic)


def _predictions(p: Pipeline, expect: int) -> tuple[dict[str, Any], list[Any]]:
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=expect)
    predictions = {r.json["id"]: r.json for r in out if r.topic == p.output}
    return predictions, [r for r in out if r.topic == p.dlq]


def test_avro_events_predict_as_their_json_twins_across_a_schema_change(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    p = make_pipeline(partitions=2)
    old, new = _framer(registry, p.input, V1), _framer(registry, p.input, V2)
    events: list[tuple[bytes, bytes]] = []
    for i, (key, value) in enumerate(good_events(200, run="twin")):
        event = orjson.loads(value)
        events.append((key, value))  # JSON text, id twin-i
        avro = {**event, "id": f"avro-{i}"}
        events.append((key, old(avro) if i < 100 else new({**avro, "source": "pos-7"})))
    send(p.bootstrap, p.input, events)

    worker = p.start_worker("--value-format", "auto", "--schema-registry-url", schema_registry_url)
    predictions, dead = _predictions(p, len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert dead == []
    assert len(predictions) == 400
    for i in range(200):
        avro, twin = predictions[f"avro-{i}"], predictions[f"twin-{i}"]
        assert avro["outputs"] == twin["outputs"] and avro["model"] == twin["model"]


def test_each_bad_framed_value_is_one_dead_letter_with_its_reason(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    p = make_pipeline(partitions=1)
    frame = _framer(registry, p.input, V1)
    odd = _framer(registry, f"{p.input}-odd", NO_FEATURES)
    good = [(k, frame(orjson.loads(v))) for k, v in good_events(50, run="ok")]
    sample = good[0][1]
    bad = {
        b"unknown-schema": sample[:1] + (987654).to_bytes(4, "big") + sample[5:],
        b"truncated": sample[:-20],
        b"header-only": sample[:3],
        b"magic-1": b"\x01" + sample[1:],
        b"no-features": odd({"id": "nf"}),
    }
    send(p.bootstrap, p.input, [*good[:25], *bad.items(), *good[25:]])

    worker = p.start_worker("--value-format", "avro", "--schema-registry-url", schema_registry_url)
    predictions, dead = _predictions(p, len(good) + len(bad))
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert len(predictions) == 50
    reasons = {r.key: r for r in dead}
    assert sorted(reasons) == sorted(bad)
    for key, value in bad.items():
        assert reasons[key].value == value  # the original bytes
        assert reasons[key].headers["pipeline.error.stage"] in (b"decode", b"validate")
    kinds = {k: reasons[k].headers["pipeline.error.type"] for k in bad}
    assert kinds == {
        b"unknown-schema": b"UnknownSchema",
        b"truncated": b"InvalidAvro",
        b"header-only": b"TruncatedFrame",
        b"magic-1": b"UnknownMagicByte",
        b"no-features": b"MissingField",
    }
    messages = {k: (reasons[k].headers["pipeline.error.message"] or b"").decode() for k in bad}
    assert "schema id 987654" in messages[b"unknown-schema"]
    assert (
        "schema id" in messages[b"truncated"] and "example.FeatureEvent" in messages[b"truncated"]
    )
    assert "got byte 0x01" in messages[b"magic-1"]
    assert "features is required" in messages[b"no-features"]
    assert "record NotAnEvent" in messages[b"no-features"]


def test_a_registry_down_at_start_stops_the_worker_with_its_exit_code(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=1)
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    worker = p.start_worker("--value-format", "avro", "--schema-registry-url", url)
    code = worker.wait(60)
    assert code == REGISTRY_UNREACHABLE, worker.log
    assert f"the Schema Registry at {url} did not answer" in worker.log
    assert "pipeline schema-registry start" in worker.log


def _produce(p: Pipeline, url: str, schema: Path, *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "produce", "--bootstrap-servers", p.bootstrap,
         "--topic", p.input, "--value-format", "avro", "--schema", str(schema),
         "--schema-registry-url", url, *args],
        capture_output=True, text=True, input=stdin, timeout=120, check=False,
    )  # fmt: skip


def test_pipeline_produce_frames_avro_that_the_exactly_once_worker_predicts(
    make_pipeline: Callable[..., Pipeline], schema_registry_url: str, tmp_path: Path
) -> None:
    p = make_pipeline(partitions=2)
    schema = tmp_path / "event.avsc"
    schema.write_text(json.dumps(V1))
    sent = _produce(p, schema_registry_url, schema, "--synthetic", "breast-cancer-logreg",
                    "--count", "100")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    unfit = _produce(p, schema_registry_url, schema, "--file", "-", stdin='{"id": "x"}\n')
    assert unfit.returncode == 3
    assert "event 1 does not fit the Avro schema" in unfit.stderr
    assert "no value and no default for features" in unfit.stderr

    worker = p.start_worker(
        "--value-format", "avro", "--schema-registry-url", schema_registry_url,
        "--guarantee", "exactly-once",
    )  # fmt: skip
    predictions, dead = _predictions(p, 100)
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert dead == [] and len(predictions) == 100
    assert {r["model"] for r in predictions.values()} == {"breast-cancer-logreg"}
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        assert client.get_latest_version(f"{p.input}-value").schema.schema_str is not None


def test_a_share_group_worker_reads_and_writes_avro_too(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    p = make_pipeline(partitions=1)
    if not share_groups_supported(p.bootstrap):
        pytest.skip(f"the broker at {p.bootstrap} has no share groups (needs Kafka 4.2+)")
    lock_for(p, 5000)  # and start the new share group at the earliest offset
    frame = _framer(registry, p.input, V1)
    good = [(k, frame(orjson.loads(v))) for k, v in good_events(50, run="share")]
    send(p.bootstrap, p.input, [*good, (b"magic-1", b"\x01" + good[0][1][1:])])

    worker = p.start_worker(
        "--group-type", "share", "--value-format", "avro", "--output-format", "avro",
        "--schema-registry-url", schema_registry_url,
    )  # fmt: skip
    predictions = _read_avro(p, registry, p.output, len(good))
    dead = read_all(p.bootstrap, [p.dlq], expect=1)
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert len(predictions) == 50
    assert {r["model"] for r in predictions.values()} == {"breast-cancer-mlp"}
    assert [(r.key, r.headers["pipeline.error.type"]) for r in dead] == [
        (b"magic-1", b"UnknownMagicByte")
    ]


def test_a_registry_gone_mid_run_keeps_cached_schemas_and_explains_a_new_one(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    missing = missing_tools()
    if missing is not None:
        pytest.skip(missing)
    own = LocalRegistry(tmp_path / "registry")  # this test stops it: not the session's
    info, _ = own.start(port=free_port())
    try:
        p = make_pipeline(partitions=1)
        with SchemaRegistryClient({"url": info.url}) as client:
            old, new = _framer(client, p.input, V1), _framer(client, p.input, V2)
            events = [(k, orjson.loads(v)) for k, v in good_events(100, run="gone")]
            before = [(k, old(e)) for k, e in events[:50]]
            after = [(k, old(e)) for k, e in events[50:]]
            unseen = new({**events[0][1], "id": "unseen", "source": None})
        send(p.bootstrap, p.input, before)
        worker = p.start_worker("--value-format", "avro", "--schema-registry-url", info.url)
        wait_for_outputs(p.bootstrap, p.output, 50)
    finally:
        own.stop()
    send(p.bootstrap, p.input, [*after, (b"unseen", unseen)])
    predictions, dead = _predictions(p, 101)
    code, _ = worker.stop()

    assert code == 0, worker.log
    assert len(predictions) == 100  # the cached schema id kept working
    ((letter),) = dead
    assert letter.key == b"unseen" and letter.value == unseen
    assert letter.headers["pipeline.error.type"] == b"RegistryUnavailable"
    message = (letter.headers["pipeline.error.message"] or b"").decode()
    assert f"the Schema Registry at {info.url} did not give schema id" in message


def _read_avro(
    p: Pipeline, registry: SchemaRegistryClient, topic: str, expect: int
) -> dict[str, dict[str, Any]]:
    """A plain `AvroDeserializer` consumer's view of `topic`: id -> prediction."""
    deserialize = AvroDeserializer(registry)
    out = read_all(p.bootstrap, [topic], expect=expect)
    ctx = SerializationContext(topic, MessageField.VALUE)
    return {d["id"]: d for d in (deserialize(r.value, ctx) for r in out)}


def _same(avro: dict[str, Any], twin: dict[str, Any]) -> bool:
    """An Avro prediction equals its JSON twin (Avro floats read back as the double of the
    float32 written; JSON writes the float32's shortest text: compare as float32)."""
    shown = {k: v for k, v in avro.items() if v is not None and k not in ("id", "predicted_at")}
    wanted = {k: v for k, v in twin.items() if k not in ("id", "predicted_at", "prediction_id")}
    shown.pop("prediction_id")
    return bool(_f32(shown) == _f32(wanted))


def _f32(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _f32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_f32(v) for v in value]
    return np.float32(value) if isinstance(value, float) else value


def test_avro_predictions_equal_the_json_paths_and_each_model_registers_once(
    make_pipeline: Callable[..., Pipeline],
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
) -> None:
    """--output-format avro with the record strategy: one subject per model, one schema
    version each, read by a plain AvroDeserializer consumer; the same events through a
    JSON worker give the same predictions. The exactly-once path writes the same form."""
    p = make_pipeline(partitions=2)
    events = [*good_events(60, run="mlp"), *good_events(60, model="breast-cancer-gbt", run="gbt")]
    send(p.bootstrap, p.input, events)
    json_out = make_topic("json-out", partitions=2)
    avro = p.start_worker(
        "--output-format", "avro", "--output-subject-strategy", "record",
        "--schema-registry-url", schema_registry_url, "--guarantee", "exactly-once",
    )  # fmt: skip
    twin = p.start_worker("--output-topic", json_out, "--group-id", make_group())
    predictions = _read_avro(p, registry, p.output, len(events))
    twins = {r.json["id"]: r.json for r in read_all(p.bootstrap, [json_out], expect=len(events))}
    assert avro.stop()[0] == 0, avro.log[-3000:]
    assert twin.stop()[0] == 0, twin.log[-3000:]

    assert sorted(predictions) == sorted(twins)
    assert all(_same(predictions[i], twins[i]) for i in twins), next(
        (predictions[i], twins[i]) for i in twins if not _same(predictions[i], twins[i])
    )
    for model in ("breast_cancer_mlp", "breast_cancer_gbt"):
        assert registry.get_versions(f"pipeline.prediction.{model}") == [1]
    assert "are written as Avro: schema id" in avro.log


def test_a_version_whose_outputs_break_compatibility_is_refused_at_start(
    make_pipeline: Callable[..., Pipeline],
    schema_registry_url: str,
    registry: SchemaRegistryClient,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    """Version 1 wrote probabilities as double (card-fraud); version 2's are float (the
    MLP): a reader of version 2's schema cannot read version 1's records, so a registry
    checking BACKWARD compatibility refuses it, and the worker stops at start saying why
    rather than writing records its consumers cannot read."""
    models = tmp_path / "models"
    for version, source in (("1", "card-fraud"), ("2", "breast-cancer-mlp")):
        shutil.copytree(repo_root / "models" / source / "1", models / "scorer" / version)
    p = make_pipeline(partitions=1, models=models)
    subject = f"{p.output}-value"
    registry.set_compatibility(subject, "BACKWARD")
    (models / "scorer" / "PINNED").write_text("1\n")
    first = p.start_worker("--output-format", "avro", "--schema-registry-url", schema_registry_url)
    first.wait_for_log("are written as Avro: schema id", timeout_s=60)
    assert first.stop()[0] == 0, first.log[-3000:]
    (models / "scorer" / "PINNED").unlink()

    second = p.start_worker("--output-format", "avro", "--schema-registry-url", schema_registry_url)
    code = second.wait(timeout_s=60)
    assert code == CONFIG, second.log[-3000:]
    assert f"refused the prediction schema of model 'scorer' version '2' under subject " \
           f"'{subject}'" in second.log  # fmt: skip
    assert registry.get_versions(subject) == [1]

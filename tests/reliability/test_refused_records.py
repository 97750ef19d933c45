"""T12: records the broker refuses and models whose outputs are not tensors, in both modes.

An event of almost 1 MB is a valid Kafka record but too large for the codec, and its dead
letter (the same bytes plus headers) is too large for the producer: it must still end as
one dead letter, without its value and with headers that say so, while the events behind
it are predicted. A classifier converted with skl2onnx's defaults returns a sequence of
``{class: probability}`` maps (ZipMap): its events are predicted with the maps as JSON
objects; a model whose output is a sequence of tensors is refused at load, and its events
become dead letters. In every case the worker keeps running and nothing is lost.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import Accounting, good_events, send
from tests.modelfactory import sequence_output_model, zipmap_classifier

from .harness import (
    GUARANTEES,
    MLP,
    TimedRecord,
    answered_then_stopped,
    guarantee_args,
    read_committed,
    report,
    split,
)

BIG_BYTES = 999_688  # the size seen from outside: under the broker's 1 MiB default limit


def _oversized_event() -> bytes:
    event = orjson.loads(good_events(1, run="big")[0][1])
    event["id"] = "big-0"
    event["padding"] = ""
    pad = BIG_BYTES - len(orjson.dumps(event))
    event["padding"] = "x" * pad
    value = orjson.dumps(event)
    assert len(value) == BIG_BYTES
    return value


def _send_large(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1_048_576})
    producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def check_the_oversized_letter(out: list[TimedRecord], ids: list[str]) -> TimedRecord:
    """Check that every id in `ids` ended once among `out`, the oversized event (sent with
    `_send_large`) as its only dead letter, without its value; return that letter."""
    predictions, dead = split(out)
    acc = Accounting.of(predictions, dead)
    assert acc.lost(ids) == [] and acc.duplicates() == 0
    (letter,) = dead
    h = letter.headers
    assert letter.key == b"big-key" and not letter.value
    assert h["pipeline.error.stage"] == b"decode" and h["pipeline.error.type"] == b"TooLarge"
    assert h["pipeline.value.omitted"] == str(BIG_BYTES).encode()
    return letter


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_record_too_large_to_dead_letter_whole_ends_as_a_dead_letter_without_its_value(
    make_pipeline: Callable[..., Pipeline], guarantee: str
) -> None:
    p = make_pipeline(partitions=1)
    big = _oversized_event()
    _send_large(p.bootstrap, p.input, b"big-key", big)
    events = good_events(100)
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP, *guarantee_args(guarantee))
    # A dead letter without its value is known by its source position (topic:partition:offset).
    ids = [f"{p.input}:0:0", *(orjson.loads(v)["id"] for _, v in events)]
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=90)
    assert worker.proc.poll() is None, f"the worker died:\n{worker.log[-3000:]}"
    code, _ = worker.stop(signal.SIGTERM)
    assert code == 0, worker.log[-3000:]

    h = check_the_oversized_letter(out, ids).headers
    assert (h["pipeline.source.topic"], h["pipeline.source.offset"]) == (p.input.encode(), b"0")
    assert "Traceback" not in worker.log
    report(f"T12-oversized-{guarantee}", events=len(ids), lost=0, duplicates=0, dead=1)


HUGE_KEY_BYTES = 999_800  # the key seen from outside: every record carrying it is too large


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_an_event_whose_key_fits_no_record_ends_as_a_dead_letter_without_its_key(
    make_pipeline: Callable[..., Pipeline], guarantee: str
) -> None:
    p = make_pipeline(partitions=1)
    before, after = good_events(50, run="before"), good_events(50, run="after")
    send(p.bootstrap, p.input, before)
    key = bytes(random.Random(7).randrange(256) for _ in range(HUGE_KEY_BYTES))
    huge = orjson.loads(good_events(1, run="huge-key")[0][1])
    _send_large(p.bootstrap, p.input, key, orjson.dumps(huge))
    send(p.bootstrap, p.input, after)
    worker = p.start_worker("--default-model", MLP, *guarantee_args(guarantee))
    ids = [orjson.loads(v)["id"] for _, v in before + after]
    ids.insert(len(before), f"{p.input}:0:{len(before)}")  # known by its source position
    _, dead = answered_then_stopped(p.bootstrap, [p.output, p.dlq], worker, ids, timeout_s=60)
    (letter,) = dead
    h = letter.headers
    assert letter.key is None and not letter.value
    assert h["pipeline.error.stage"] == b"produce"
    assert h["pipeline.error.type"] == b"MsgSizeTooLarge"
    assert h["pipeline.key.omitted"] == str(HUGE_KEY_BYTES).encode()
    assert h["pipeline.key.sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert h["pipeline.source.offset"] == str(len(before)).encode()
    assert "Traceback" not in worker.log
    report(f"T12-huge-key-{guarantee}", events=len(ids), lost=0, duplicates=0, dead=1)


SMALL_TOPIC_LIMIT = 65_536  # max.message.bytes of the outside run's output topic


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_an_output_topic_with_a_small_message_limit_gets_every_prediction(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, guarantee: str
) -> None:
    p = make_pipeline(partitions=2)
    limit = ConfigEntry("max.message.bytes", str(SMALL_TOPIC_LIMIT),
                        incremental_operation=AlterConfigOpType.SET)  # fmt: skip
    resource = ConfigResource(ResourceType.TOPIC, p.output, incremental_configs=[limit])
    for future in kafka_admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    events = good_events(20_000, run="small-limit")
    send(p.bootstrap, p.input, events)  # a backlog: the producer's batches grow large
    worker = p.start_worker("--default-model", MLP, *guarantee_args(guarantee))
    ids = [orjson.loads(v)["id"] for _, v in events]
    topics = [p.output, p.dlq]
    _, dead = answered_then_stopped(p.bootstrap, topics, worker, ids, timeout_s=120)
    assert dead == [], f"{len(dead)} valid events dead-lettered, e.g. {dead[0].headers}"
    assert "Traceback" not in worker.log
    report(f"T12-small-topic-limit-{guarantee}", events=len(ids), lost=0, duplicates=0, dead=0)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_map_outputs_are_served_and_unservable_outputs_are_dead_lettered(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path, guarantee: str
) -> None:
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models", store)
    labels = {"labels": ["malignant", "benign"], "probability_output": "output_probability"}
    zipmap_classifier(store / "zipmap" / "1", manifest=labels)
    sequence_output_model(store / "sequence" / "1")
    p = make_pipeline(partitions=2, models=store)
    events = good_events(300, model="zipmap", run="zm")
    events += good_events(20, model="sequence", run="seq")
    events += good_events(300, model=MLP, run="mlp")
    send(p.bootstrap, p.input, events)
    worker = p.start_worker(*guarantee_args(guarantee))
    ids = [orjson.loads(v)["id"] for _, v in events]
    topics = [p.output, p.dlq]
    predictions, dead = answered_then_stopped(p.bootstrap, topics, worker, ids, timeout_s=90)
    zipmapped = [r.json for r in predictions if r.json["model"] == "zipmap"]
    assert len(zipmapped) == 300
    for doc in zipmapped:
        probabilities = doc["outputs"]["output_probability"]
        assert set(probabilities) == {"0", "1"}
        assert doc["label"] == labels["labels"][doc["outputs"]["output_label"]]
        assert doc["score"] == max(probabilities.values())
    assert len([r for r in predictions if r.json["model"] == MLP]) == 300
    assert len(dead) == 20
    for letter in dead:
        message = (letter.headers["pipeline.error.message"] or b"").decode()
        assert letter.headers["pipeline.error.stage"] == b"route"
        assert "seq(tensor(float))" in message, message
    assert "Traceback" not in worker.log
    report(f"T12-map-outputs-{guarantee}", events=len(ids), lost=0, duplicates=0, dead=20)

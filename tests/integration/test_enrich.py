"""Enrichment on the real broker: a table topic of card statistics joined into payment
events; predictions equal ONNX Runtime on the joined row, an update acknowledged before an
event is seen by it, a tombstone makes the next event of its key an EntityNotFound dead
letter, and a restarted worker rebuilds the table and loses no event."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer

from tests.modelfactory import linear_model

from .conftest import Pipeline, framer
from .kafkaio import Accounting, Record, free_port, read_all, send
from .test_share import lock_for, share_groups_supported

NAMES = ["amount", "spend_1h", "tx_1h"]


def _table_topic(admin: AdminClient, name: str) -> str:
    topic = f"{name}-{np.random.default_rng().integers(1 << 40):x}"
    futures = admin.create_topics(
        [NewTopic(topic, 2, 1, config={"cleanup.policy": "compact"})], operation_timeout=30
    )
    futures[topic].result(30)
    return topic


def _fraud_model(tmp_path: Path) -> tuple[Path, Path]:
    """A models directory holding the fraud model (score = 0.5 amount + 2 spend_1h - 3
    tx_1h); returns it and the model's file."""
    models = tmp_path / "models"
    return models, linear_model(models / "fraud" / "1", NAMES, [0.5, 2.0, -3.0]) / "model.onnx"


def _card_stats(count: int) -> dict[str, tuple[float, float]]:
    """card-0 .. card-<count - 1>, each with stats of its own (spend_1h, tx_1h)."""
    return {f"card-{i}": (100.0 + i, float(i)) for i in range(count)}


def _stats(card: str, spend: float, tx: float) -> tuple[bytes, bytes]:
    return card.encode(), orjson.dumps({"spend_1h": spend, "tx_1h": tx})


def _payments(run: str, cards: list[str], start: int = 0) -> list[tuple[bytes, bytes]]:
    return [
        (card.encode(), orjson.dumps(
            {"id": f"{run}-{start + i}", "card_id": card, "features": {"amount": 10.0 + i}}))
        for i, card in enumerate(cards)
    ]  # fmt: skip


def _score(model: Path, rows: list[list[float]]) -> list[float]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": np.array(rows, dtype=np.float32)})[0]
    return [float(v) for v in out[:, 0]]


def _check(records: list[Record], model: Path, stats: dict[str, tuple[float, float]],
           events: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
    """Each prediction equals ONNX Runtime on the event's amount joined with its card's stats."""
    by_id = {r.json["id"]: r for r in records}
    rows, ids = [], []
    for _, value in events:
        event: dict[str, Any] = orjson.loads(value)
        rows.append([event["features"]["amount"], *stats[event["card_id"]]])
        ids.append(event["id"])
    for event_id, expected in zip(ids, _score(model, rows), strict=True):
        record = by_id[event_id]
        assert np.float32(record.json["outputs"]["score"][0]) == np.float32(expected), event_id
        assert record.headers["pipeline.enriched.at"] is not None


def test_enriched_predictions_follow_the_table_and_survive_a_restart(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    models, model = _fraud_model(tmp_path)
    p = make_pipeline(models=models, partitions=2)
    table = _table_topic(kafka_admin, "card-stats")
    stats = _card_stats(20)
    cards = list(stats)
    send(p.bootstrap, table, [_stats(c, 1.0, 1.0) for c in cards])  # overwritten below
    send(p.bootstrap, table, [_stats(c, *stats[c]) for c in cards])
    first = _payments("a", cards * 5)
    send(p.bootstrap, p.input, first)
    enrich = ("--enrich", f"stats={table}:card_id", "--default-model", "fraud")

    worker = p.start_worker(*enrich)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(first))
    _check([r for r in out if r.topic == p.output], model, stats, first)
    assert not [r for r in out if r.topic == p.dlq]

    # An update and a tombstone acknowledged before the next events are seen by them.
    stats["card-1"] = (999.5, 42.0)
    send(p.bootstrap, table, [_stats("card-1", *stats["card-1"]), (b"card-2", None)])
    second = _payments("b", ["card-1", "card-2", "card-3"])
    send(p.bootstrap, p.input, second)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(first) + len(second))
    new = [r for r in out if r.json and r.json.get("id", "").startswith("b-")]
    _check([r for r in new if r.topic == p.output], model, stats, [second[0], second[2]])
    (dead,) = [r for r in out if r.topic == p.dlq]
    assert dead.headers["pipeline.error.stage"] == b"enrich"
    assert dead.headers["pipeline.error.type"] == b"EntityNotFound"
    message = (dead.headers["pipeline.error.message"] or b"").decode()
    assert "'card-2'" in message and repr(table) in message
    assert dead.value == second[1][1] and dead.key == b"card-2"  # the original record
    code, _ = worker.stop()
    assert code == 0, worker.log

    # A restart rebuilds the table from the topic: nothing is lost, nothing dead-lettered
    # but the tombstoned card.
    third = _payments("c", [c for c in cards if c != "card-2"] * 3)
    send(p.bootstrap, p.input, third)
    worker = p.start_worker(*enrich)
    total = len(first) + len(second) + len(third)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=total)
    code, _ = worker.stop()
    assert code == 0, worker.log
    predictions = [r for r in out if r.topic == p.output]
    _check([r for r in predictions if r.json["id"].startswith("c-")], model, stats, third)
    acc = Accounting.of(predictions, [r for r in out if r.topic == p.dlq])
    ids = [orjson.loads(v)["id"] for _, v in [*first, *second, *third]]
    assert acc.lost(ids) == [] and acc.duplicates() == 0
    assert "table stats loaded" in worker.log


CARD_STATS_AVRO = {
    "type": "record",
    "name": "CardStats",
    "fields": [{"name": "spend_1h", "type": "double"}, {"name": "tx_1h", "type": "double"}],
}


def test_table_values_a_registry_serializer_wrote_are_joined_like_json_ones(
    make_pipeline: Callable[..., Pipeline],
    kafka_admin: AdminClient,
    registry: SchemaRegistryClient,
    schema_registry_url: str,
    tmp_path: Path,
) -> None:
    """A stats job writing Avro through the registry, beside one still writing JSON."""
    models, model = _fraud_model(tmp_path)
    p = make_pipeline(models=models, partitions=2)
    table = _table_topic(kafka_admin, "card-stats-avro")
    stats = _card_stats(10)
    cards = list(stats)
    avro = framer(AvroSerializer(registry, json.dumps(CARD_STATS_AVRO)), table)
    send(p.bootstrap, table, [
        (c.encode(), avro({"spend_1h": stats[c][0], "tx_1h": stats[c][1]})) if i % 2
        else _stats(c, *stats[c])
        for i, c in enumerate(cards)
    ])  # fmt: skip
    events = _payments("r", cards * 2)
    send(p.bootstrap, p.input, events)

    worker = p.start_worker("--enrich", f"stats={table}:card_id", "--default-model", "fraud",
                            "--schema-registry-url", schema_registry_url)  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()
    assert code == 0, worker.log
    assert not [r for r in out if r.topic == p.dlq], worker.log
    _check([r for r in out if r.topic == p.output], model, stats, events)
    assert "skipped record" not in worker.log


def test_a_table_topic_that_is_not_compacted_is_warned_about(
    make_pipeline: Callable[..., Pipeline], make_topic: Callable[..., str], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    linear_model(models / "fraud" / "1", NAMES, [1.0, 1.0, 1.0])
    p = make_pipeline(models=models, partitions=1)
    table = make_topic("not-compacted")  # cleanup.policy=delete
    send(p.bootstrap, table, [_stats("card-0", 1.5, 2.5)])
    send(p.bootstrap, p.input, _payments("a", ["card-0"]))

    worker = p.start_worker("--enrich", f"stats={table}:card_id", "--default-model", "fraud")
    read_all(p.bootstrap, [p.output], expect=1)
    worker.stop()

    assert f"table topic {table!r} has cleanup.policy=delete, not compact" in worker.log


def test_a_table_over_its_bound_or_missing_stops_the_worker_at_start(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    linear_model(models / "fraud" / "1", NAMES, [1.0, 1.0, 1.0])
    p = make_pipeline(models=models, partitions=1)
    table = _table_topic(kafka_admin, "card-stats")
    send(p.bootstrap, table, [_stats(f"card-{i}", 1.5, 2.5) for i in range(200)])
    events = _payments("a", ["card-0"])
    send(p.bootstrap, p.input, events)

    big = p.start_worker("--enrich", f"stats={table}:card_id", "--enrich-max-bytes", "4096")
    assert big.wait(60) != 0
    assert f"table topic {table!r} (--enrich stats={table}:card_id) holds more than " in big.log
    assert "--enrich-max-bytes 4096" in big.log

    missing = f"no-such-table-{p.group}"
    gone = p.start_worker("--enrich", f"stats={missing}:card_id")
    assert gone.wait(60) != 0
    assert f"table topic {missing!r} of --enrich stats={missing}:card_id does not" in gone.log
    assert missing not in kafka_admin.list_topics(timeout=10).topics  # not created by asking

    # Refused at start, neither worker consumed: the event is still there for the next one.
    ok = p.start_worker("--enrich", f"stats={table}:card_id", "--default-model", "fraud")
    (prediction,) = read_all(p.bootstrap, [p.output], expect=1)
    ok.stop()
    assert prediction.json["id"] == "a-0"


def test_with_the_defaults_policy_an_unknown_entity_is_predicted_from_the_models_defaults(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """--enrich-missing stats=defaults: a card the table never had, or lost to a tombstone,
    is scored with the manifest's defaults (equal to ONNX Runtime on that row) and says so
    in a pipeline.enriched.defaults header; a known card is joined as before, without it."""
    models, model = _fraud_model(tmp_path)
    manifest = model.parent / "model.json"
    defaults = (25.0, 0.5)
    manifest.write_bytes(orjson.dumps({**orjson.loads(manifest.read_bytes()),
                                       "defaults": dict(zip(NAMES[1:], defaults, strict=True))}))  # fmt: skip
    p = make_pipeline(models=models, partitions=2)
    table = _table_topic(kafka_admin, "card-stats")
    stats = {"card-1": (100.0, 3.0), "card-2": (200.0, 4.0)}
    send(p.bootstrap, table, [_stats(c, *v) for c, v in stats.items()])
    send(p.bootstrap, table, [(b"card-2", None)])  # a tombstone: card-2 is gone
    events = _payments("d", ["card-1", "card-2", "card-9"] * 4)
    send(p.bootstrap, p.input, events)

    port = free_port()
    worker = p.start_worker("--enrich", f"stats={table}:card_id", "--default-model", "fraud",
                            "--enrich-missing", "stats=defaults", "--metrics-port", str(port))  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    code, _ = worker.stop()
    assert code == 0, worker.log

    assert [r for r in out if r.topic == p.dlq] == []
    acc = Accounting.of(out, [])
    assert acc.lost([orjson.loads(v)["id"] for _, v in events]) == [] and acc.duplicates() == 0
    _check(out, model, {**stats, "card-2": defaults, "card-9": defaults}, events)
    for record in out:
        defaulted = record.headers.get("pipeline.enriched.defaults")
        assert defaulted == (None if record.key == b"card-1" else b"stats"), record
    assert 'pipeline_enrich_defaults_total{table="stats"} 8.0' in metrics, metrics


def test_with_the_wait_policy_an_entity_produced_after_its_event_is_joined_in_time(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """--enrich-missing stats=wait:5000: events of a card whose stats are produced a second
    after the worker consumed them are joined with those stats (equal to ONNX Runtime on the
    joined row, with a pipeline.enriched.at that counts the update); a card that never
    arrives is an EntityNotFound dead letter saying how long it was waited for; nothing is
    lost or doubled."""
    models, model = _fraud_model(tmp_path)
    p = make_pipeline(models=models, partitions=1)  # card-7's events before card-404's
    table = _table_topic(kafka_admin, "card-stats")
    stats = {"card-1": (100.0, 3.0), "card-7": (7.0, 70.0)}
    send(p.bootstrap, table, [_stats("card-1", *stats["card-1"])])
    port = free_port()
    worker = p.start_worker("--enrich", f"stats={table}:card_id", "--default-model", "fraud",
                            "--enrich-missing", "stats=wait:5000", "--metrics-port", str(port))  # fmt: skip
    warm = _payments("w", ["card-1"])
    send(p.bootstrap, p.input, warm)
    read_all(p.bootstrap, [p.output], expect=1)  # the worker is consuming now
    late = _payments("l", ["card-7", "card-7", "card-7", "card-404"])
    send(p.bootstrap, p.input, late)
    time.sleep(1.0)  # the worker has consumed them and waits
    send(p.bootstrap, table, [_stats("card-7", *stats["card-7"])])
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(warm) + len(late))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    code, _ = worker.stop()
    assert code == 0, worker.log

    predictions = [r for r in out if r.topic == p.output]
    (dead,) = [r for r in out if r.topic == p.dlq]
    assert dead.key == b"card-404" and dead.headers["pipeline.error.type"] == b"EntityNotFound"
    assert b"not even after a wait of up to 5000 ms" in dead.headers["pipeline.error.message"]
    _check(predictions, model, stats, [*warm, *late[:3]])
    counted = {r.json["id"]: sum(orjson.loads(r.headers["pipeline.enriched.at"])[table].values())
               for r in predictions}  # fmt: skip
    assert counted["w-0"] == 1 and {counted[f"l-{i}"] for i in range(3)} == {2}, counted
    assert re.search(r'pipeline_enrich_waits_total\{outcome="arrived",table="stats"\} [1-9]',
                     metrics), metrics  # fmt: skip
    assert 'pipeline_enrich_waits_total{outcome="absent",table="stats"} 1.0' in metrics
    acc = Accounting.of(predictions, [dead])
    assert acc.lost([orjson.loads(v)["id"] for _, v in [*warm, *late]]) == []
    assert acc.duplicates() == 0


def test_a_worker_joining_loads_the_whole_table_and_the_rebalance_loses_no_event(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """A second worker joins the group mid-stream: it loads the whole table before it takes
    partitions, an update made after the rebalance reaches the events of both workers, and
    every event is predicted once, equal to ONNX Runtime on its joined row."""
    models, model = _fraud_model(tmp_path)
    p = make_pipeline(models=models, partitions=4)
    table = _table_topic(kafka_admin, "card-stats")
    stats = _card_stats(20)
    cards = list(stats)
    send(p.bootstrap, table, [_stats(c, *stats[c]) for c in cards])
    enrich = ("--enrich", f"stats={table}:card_id", "--default-model", "fraud")

    first = p.start_worker(*enrich)
    before = _payments("a", cards * 10)
    send(p.bootstrap, p.input, before)
    read_all(p.bootstrap, [p.output], expect=len(before))
    second = p.start_worker(*enrich)
    second.wait_for_log("table stats loaded", timeout_s=60)
    second.wait_for_log(re.compile(rf"assigned {re.escape(p.input)}\["), timeout_s=60)
    first.wait_for_log("revoked ", timeout_s=60)  # it gave the newcomer partitions

    updated = dict(stats, **{c: (5.0, 50.0) for c in cards[:10]})
    send(p.bootstrap, table, [_stats(c, *updated[c]) for c in cards[:10]])
    after = _payments("b", cards * 10)
    send(p.bootstrap, p.input, after)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(before) + len(after))
    for worker in (first, second):
        code, _ = worker.stop()
        assert code == 0, worker.log[-2000:]

    predictions = [r for r in out if r.topic == p.output]
    _check([r for r in predictions if r.json["id"].startswith("a-")], model, stats, before)
    _check([r for r in predictions if r.json["id"].startswith("b-")], model, updated, after)
    acc = Accounting.of(predictions, [r for r in out if r.topic == p.dlq])
    ids = [orjson.loads(v)["id"] for _, v in [*before, *after]]
    assert acc.lost(ids) == [] and acc.duplicates() == 0


def test_share_group_workers_join_the_table_too(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """Two share-group workers on one partition: each loads the whole table before it
    acquires records, so every event is joined (equal to ONNX Runtime on the joined row),
    whichever worker acquires it; a missing card is an EntityNotFound dead letter."""
    models, model = _fraud_model(tmp_path)
    p = make_pipeline(models=models, partitions=1)
    if not share_groups_supported(p.bootstrap):
        pytest.skip(f"the broker at {p.bootstrap} has no share groups (needs Kafka 4.2+)")
    lock_for(p, 5_000)
    table = _table_topic(kafka_admin, "card-stats")
    cards = [f"card-{i}" for i in range(10)]
    stats = {c: (10.0 * i, float(i)) for i, c in enumerate(cards)}
    send(p.bootstrap, table, [_stats(c, *stats[c]) for c in cards])
    events = _payments("s", cards * 20)
    missing = _payments("m", ["card-99"])
    send(p.bootstrap, p.input, [*events, *missing])

    args = ("--group-type", "share", "--enrich", f"stats={table}:card_id",
            "--enrich-missing", "stats=wait:200", "--default-model", "fraud")  # fmt: skip
    workers = [p.start_worker(*args), p.start_worker(*args)]
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events) + 1)
    for worker in workers:
        code, _ = worker.stop()
        assert code == 0, worker.log[-2000:]
        assert "table stats loaded" in worker.log

    predictions = [r for r in out if r.topic == p.output]
    _check(predictions, model, stats, events)
    (dead,) = [r for r in out if r.topic == p.dlq]
    assert dead.headers["pipeline.error.type"] == b"EntityNotFound" and dead.key == b"card-99"
    assert b"after a wait of up to 200 ms" in dead.headers["pipeline.error.message"]
    acc = Accounting.of(predictions, [dead])
    assert acc.lost([orjson.loads(v)["id"] for _, v in [*events, *missing]]) == []
    assert acc.duplicates() == 0

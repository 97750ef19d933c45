"""`pipeline run --group-type share` on a real broker with share groups (Kafka 4.2+).

More workers than partitions each predict a share; a worker killed while holding records
gets them back to the others once their lock expires; a record delivered more than
``--max-delivery-attempts`` times ends in the dead-letter topic with its count."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import AcknowledgeType, ShareConsumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from tests.integration.test_metrics import scrape, total, wait_ready

from .conftest import Pipeline
from .kafkaio import Accounting, free_port, good_events, read_all, send, wait_for_outputs

MLP = "breast-cancer-mlp"
SHARE = ("--group-type", "share", "--default-model", MLP)


def share_groups_supported(bootstrap: str) -> bool:
    """Whether the broker takes share-group configs (Kafka 4.2+, share.version on)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
    )
    try:
        for future in admin.incremental_alter_configs(
            [ConfigResource(ResourceType.GROUP, "probe-share-support", incremental_configs=[entry])]
        ).values():
            future.result(timeout=30)
    except Exception:
        return False
    return True


@pytest.fixture
def share_pipeline(make_pipeline: Callable[..., Pipeline]) -> Callable[..., Pipeline]:
    def make(**kwargs: object) -> Pipeline:
        p = make_pipeline(**kwargs)
        if not share_groups_supported(p.bootstrap):
            pytest.skip(f"the broker at {p.bootstrap} has no share groups (needs Kafka 4.2+)")
        return p

    return make


def lock_for(p: Pipeline, ms: int) -> None:
    """Shorten the share group's record lock (the local broker allows down to 1 s)."""
    admin = AdminClient({"bootstrap.servers": p.bootstrap})
    entries = [
        ConfigEntry(
            "share.record.lock.duration.ms", str(ms), incremental_operation=AlterConfigOpType.SET
        ),
        ConfigEntry(
            "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
        ),
    ]
    for future in admin.incremental_alter_configs(
        [ConfigResource(ResourceType.GROUP, p.group, incremental_configs=entries)]
    ).values():
        future.result(timeout=30)


def fail_deliveries(p: Pipeline, times: int, timeout_s: float = 60.0) -> list[int]:
    """Acquire the group's records and release each one, `times` deliveries in all, as a
    worker whose outputs keep failing does; return the delivery counts the broker gave."""
    consumer = ShareConsumer(
        {
            "bootstrap.servers": p.bootstrap,
            "group.id": p.group,
            "share.acknowledgement.mode": "explicit",
        }
    )
    consumer.subscribe([p.input])
    counts: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(counts) < times and time.monotonic() < deadline:
            for m in consumer.poll(0.5):
                if m.error() is None:
                    counts.append(m.delivery_count() or 0)
                    consumer.acknowledge(m, AcknowledgeType.RELEASE)
            consumer.commit_sync()
    finally:
        consumer.close()
    return counts


def ids_of(events: list[tuple[bytes, bytes]]) -> list[str]:
    return [orjson.loads(v)["id"] for _, v in events]


def test_six_workers_on_two_partitions_each_predict_a_share(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=2)
    events = good_events(40_000)
    parent = p.start_worker(*SHARE, "--workers", "6", "--max-batch-size", "64")
    for i in range(6):
        parent.wait_for_log(
            f"worker-{i} INFO pipeline.worker: share-group worker starting", timeout_s=90
        )
    time.sleep(3)  # every member has joined the share group
    for i in range(0, len(events), 1000):  # a steady stream over about 10 s, not one burst
        send(p.bootstrap, p.input, events[i : i + 1000])
        time.sleep(0.2)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), timeout_s=180)
    code, _ = parent.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, parent.log[-3000:]
    acc = Accounting.of(out, [])
    assert acc.lost(ids_of(events)) == []
    stopped = r"worker-(\d) INFO pipeline.worker: worker stopped: .* total in (\d+)"
    totals = {int(w): int(n) for w, n in re.findall(stopped, parent.log)}
    assert len(totals) == 6 and all(n > 0 for n in totals.values()), totals
    print(f"share group, 6 workers on 2 partitions: {totals}, duplicates {acc.duplicates()}")


def test_a_killed_workers_records_come_back_to_the_others(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=2)
    lock_for(p, 2000)
    events = good_events(20_000)
    send(p.bootstrap, p.input, events)
    doomed = p.start_worker(*SHARE)
    wait_for_outputs(p.bootstrap, p.output, 1000)
    survivor = p.start_worker(*SHARE)
    doomed.stop(signal.SIGKILL)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), timeout_s=180)
    assert survivor.stop(signal.SIGTERM, timeout_s=30)[0] == 0
    acc = Accounting.of(
        [r for r in out if r.topic == p.output], [r for r in out if r.topic == p.dlq]
    )
    assert acc.lost(ids_of(events)) == []
    print(f"share group, one of two workers killed: 0 lost, {acc.duplicates()} duplicates")


def test_a_record_delivered_too_often_ends_in_the_dlq_with_its_count(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=1)
    lock_for(p, 2000)
    events = good_events(2_000)
    send(p.bootstrap, p.input, events)
    # A member that dies holding records makes each of them come back when its locks run
    # out: with one attempt allowed, the next worker dead-letters those instead of running
    # them again. (A worker killed mid-stream raced its own speed: on a fast machine it had
    # finished every record, holding none, before the kill.)
    held = _killed_while_holding(p)
    assert held > 0
    others = p.start_worker(*SHARE, "--max-delivery-attempts", "1")
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), timeout_s=180)
    assert others.stop(signal.SIGTERM, timeout_s=30)[0] == 0
    dead = [r for r in out if r.topic == p.dlq]
    acc = Accounting.of([r for r in out if r.topic == p.output], dead)
    assert acc.lost(ids_of(events)) == []
    assert dead, "the records the killed worker held came back and were dead-lettered"
    for letter in dead:
        assert letter.headers["pipeline.error.stage"] == b"deliver"
        assert letter.headers["pipeline.error.type"] == b"TooManyDeliveries"
        assert int(letter.headers["pipeline.delivery.count"] or b"0") >= 2
        assert letter.value  # the original event, to replay
    assert len(dead) == held, (len(dead), held)
    print(f"share group: {len(dead)} records dead-lettered after a kill, others predicted")


_HOLDER = """
import sys, time
from confluent_kafka import ShareConsumer
consumer = ShareConsumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                          "share.acknowledgement.mode": "explicit"})
consumer.subscribe([sys.argv[3]])
while True:
    held = [m for m in consumer.poll(1.0) if m.error() is None]
    if held:
        print(len(held), flush=True)
        time.sleep(3600)  # holds its acquired records until it is killed
"""


def _killed_while_holding(p: Pipeline) -> int:
    """Run a share-group member that acquires records and holds them, SIGKILL it; return
    how many records it held (they come back to the group when their locks run out)."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, p.bootstrap, p.group, p.input],
        stdout=subprocess.PIPE, text=True,
    ) as holder:  # fmt: skip
        try:
            line = holder.stdout.readline() if holder.stdout else ""
        finally:
            holder.kill()
    return int(line or 0)


def test_a_record_that_fails_every_time_ends_as_one_dead_letter(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=1)
    lock_for(p, 2000)
    first = p.start_worker(*SHARE)  # a worker has agreed its limit with the group
    first.wait_for_log("share-group worker starting", timeout_s=90)
    assert first.stop(signal.SIGTERM, timeout_s=30)[0] == 0
    poison, fresh = good_events(2)
    send(p.bootstrap, p.input, [poison])
    # Each of the --max-delivery-attempts (5) deliveries fails and releases the record.
    assert fail_deliveries(p, 5) == [1, 2, 3, 4, 5]
    worker = p.start_worker(*SHARE)
    send(p.bootstrap, p.input, [fresh])
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=2, timeout_s=60, settle_s=3)
    assert worker.stop(signal.SIGTERM, timeout_s=30)[0] == 0
    dead = [r for r in out if r.topic == p.dlq]
    assert [r.value for r in dead] == [poison[1]], worker.log[-3000:]
    assert dead[0].headers["pipeline.error.type"] == b"TooManyDeliveries"
    assert dead[0].headers["pipeline.delivery.count"] == b"6"
    assert [r.json["id"] for r in out if r.topic == p.output] == ids_of([fresh])


def test_attempts_the_broker_would_not_allow_are_refused_before_joining(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=1)
    # 10 attempts need share.delivery.count.limit 11, above the broker's maximum (10): the
    # group keeps 5 and would archive a failing record before its dead letter.
    worker = p.start_worker(*SHARE, "--max-delivery-attempts", "10")
    assert worker.wait(timeout_s=90) == 3, worker.log[-3000:]
    assert "Pass --max-delivery-attempts 4 or less" in worker.log


def refuse_every_record(p: Pipeline, topic: str) -> None:
    """Make the broker refuse every record written to `topic` (max.message.bytes 1)."""
    admin = AdminClient({"bootstrap.servers": p.bootstrap})
    entry = ConfigEntry("max.message.bytes", "1", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_record_whose_dead_letter_fails_too_is_rejected_and_counted(
    share_pipeline: Callable[..., Pipeline],
) -> None:
    p = share_pipeline(partitions=1)
    lock_for(p, 2000)
    refuse_every_record(p, p.dlq)
    poison, fresh = good_events(2)
    send(p.bootstrap, p.input, [poison])
    assert fail_deliveries(p, 4) == [1, 2, 3, 4]  # the 5th, the last, is the worker's
    port = free_port()
    worker = p.start_worker(*SHARE, "--max-delivery-attempts", "4", "--metrics-port", str(port))
    wait_ready(port, worker)
    send(p.bootstrap, p.input, [fresh])
    wait_for_outputs(p.bootstrap, p.output, 1)
    deadline = time.monotonic() + 30
    while total(m := scrape(port), "pipeline_share_acknowledgements_total") < 2:
        assert time.monotonic() < deadline, worker.log[-3000:]
        time.sleep(0.2)
    assert worker.stop(signal.SIGTERM, timeout_s=30)[0] == 0
    acks = {kind: total(m, "pipeline_share_acknowledgements_total", kind=kind)
            for kind in ("accepted", "released", "rejected")}  # fmt: skip
    assert acks == {"accepted": 1, "released": 0, "rejected": 1}, worker.log[-3000:]
    assert "and so did its dead letter: rejecting it" in worker.log

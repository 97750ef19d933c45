"""T14: the output topic is deleted while a worker runs.

The worker's producer must not re-create it through the broker's auto-creation (which
ignores ``--topic-partitions`` and makes 1 partition): the worker stops, naming the topic,
without committing past the outputs it could not write, and a restart creates the topic
with ``--topic-partitions`` and redoes them. Nothing is lost, in either mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from pipeline import exitcodes
from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import good_events, send

from .harness import GUARANTEES, MLP, answered_then_stopped, guarantee_args, report

_TOPIC_PARTITIONS = 3
_STOP_WITHIN_S = 90.0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_deleted_output_topic_stops_the_worker_and_a_restart_creates_it_as_configured(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, guarantee: str
) -> None:
    p = make_pipeline(partitions=_TOPIC_PARTITIONS)
    args = ("--default-model", MLP, *guarantee_args(guarantee),
            "--topic-partitions", str(_TOPIC_PARTITIONS))  # fmt: skip
    first, second = good_events(200, run="before"), good_events(200, run="after")
    send(p.bootstrap, p.input, first)
    worker = p.start_worker(*args)
    worker.wait_for_log("total in 200 out 200", timeout_s=90)
    deleted = time.monotonic()
    kafka_admin.delete_topics([p.output], operation_timeout=30)[p.output].result(timeout=30)
    send(p.bootstrap, p.input, second)

    code = worker.wait(_STOP_WITHIN_S)
    stopped_after_s = time.monotonic() - deleted
    print(worker.log.splitlines()[-1])
    assert code == exitcodes.DELIVERY_FAILED, f"exit {code}:\n{worker.log[-3000:]}"
    assert p.output in worker.log.splitlines()[-1], worker.log[-3000:]
    assert "Traceback" not in worker.log, worker.log[-3000:]
    meta = kafka_admin.list_topics(timeout=10)
    assert p.output not in meta.topics, "the producer re-created the deleted output topic"

    restarted = p.start_worker(*args)
    ids = [orjson.loads(v)["id"] for _, v in first + second]
    deadline = time.monotonic() + 60
    while p.output not in kafka_admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, restarted.log[-3000:]
        time.sleep(0.5)
    partitions = len(kafka_admin.list_topics(p.output, timeout=10).topics[p.output].partitions)
    assert partitions == _TOPIC_PARTITIONS
    # The first 200 predictions went with the deleted topic: only the redone ones remain.
    answered_then_stopped(p.bootstrap, [p.output, p.dlq], restarted, ids[200:], timeout_s=120)
    report(f"T14-deleted-output-{guarantee}", events=len(ids), exit_code=code,
           stopped_after_s=stopped_after_s, partitions=partitions)  # fmt: skip

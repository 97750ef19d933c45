"""`pipeline run --http-port --grpc-port`: one process serves the Kafka stream and the doors
from one engine: its events and its requests are answered, and it stops cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import orjson
from confluent_kafka import Consumer, TopicPartition

from pipeline.serve._proto import prediction_pb2, prediction_pb2_grpc
from tests.doors.test_http import ROWS, ort_outputs

from .conftest import Pipeline
from .kafkaio import Accounting, WorkerProcess, free_port, good_events, read_all, send

MLP = "breast-cancer-mlp"


def _records_in(bootstrap: str, topic: str) -> int:
    """How many records a topic holds now (its partitions' high watermarks)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def _wait_ready(worker: WorkerProcess, http_port: int, timeout_s: float = 60.0) -> None:
    """Until the worker's HTTP door answers /readyz 200; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert worker.proc.poll() is None, worker.log[-3000:]
        assert time.monotonic() < deadline, worker.log[-3000:]
        time.sleep(0.1)


def test_one_worker_answers_kafka_events_and_requests(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    http_port, grpc_port = free_port(), free_port()
    worker = p.start_worker("--default-model", MLP, "--http-port", str(http_port),
                            "--grpc-port", str(grpc_port))  # fmt: skip
    _wait_ready(worker, http_port)
    events = good_events(2000)
    send(p.bootstrap, p.input, events)
    label, probabilities = ort_outputs(MLP, ROWS[:1])
    for _ in range(50):  # requests while the stream flows
        reply = httpx.post(f"http://127.0.0.1:{http_port}/predict", json={"data": ROWS[0].tolist()})
        assert reply.status_code == 200 and reply.json()["prediction"] == int(label[0]), reply.text
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        answer = prediction_pb2_grpc.PredictorStub(channel).Predict(
            prediction_pb2.PredictRequest(features=ROWS[0].tolist()), timeout=10
        )
    assert abs(answer.confidence - float(probabilities[0].max())) < 1e-6
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, took = worker.stop()
    assert code == 0 and took < 10, worker.log[-3000:]
    acc = Accounting.of(out, [])
    ids = [orjson.loads(v)["id"] for _, v in events]
    assert acc.lost(ids) == [] and acc.duplicates() == 0


def test_a_kafka_backlog_does_not_starve_the_doors_nor_the_doors_kafka(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    events = good_events(60_000)
    send(p.bootstrap, p.input, events)  # a backlog before the worker starts
    http_port = free_port()
    worker = p.start_worker("--default-model", MLP, "--http-port", str(http_port),
                            "--max-queue", "2000", "--max-rows-per-request", "2000")  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    _wait_ready(worker, http_port)
    rows = [ROWS[i % len(ROWS)].tolist() for i in range(2000)]  # the most one request takes
    statuses: dict[int, int] = {}
    before = _records_in(p.bootstrap, p.output)
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() - started < 8:  # one request at a time while Kafka drains
            reply = client.post(f"/v1/models/{MLP}:predict", json={"instances": rows})
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
    during = _records_in(p.bootstrap, p.output) - before
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), timeout_s=180)
    code, _ = worker.stop()

    assert code == 0, worker.log[-3000:]
    assert list(statuses) == [200] and statuses[200] >= 5, statuses
    assert before < len(events), before  # the doors were asked while a backlog waited
    assert during > 0  # and the stream moved while the doors were busy
    acc = Accounting.of(out, [])
    assert acc.lost([orjson.loads(v)["id"] for _, v in events]) == [] and acc.duplicates() == 0

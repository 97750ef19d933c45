"""`pipeline run --http-port --grpc-port`: one process serves the Kafka stream and the doors
from one engine: its events and its requests are answered, and it stops cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import orjson

from pipeline.serve._proto import prediction_pb2, prediction_pb2_grpc
from tests.doors.test_http import ROWS, ort_outputs

from .conftest import Pipeline
from .kafkaio import Accounting, free_port, good_events, read_all, send

MLP = "breast-cancer-mlp"


def test_one_worker_answers_kafka_events_and_requests(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    http_port, grpc_port = free_port(), free_port()
    worker = p.start_worker("--default-model", MLP, "--http-port", str(http_port),
                            "--grpc-port", str(grpc_port))  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert worker.proc.poll() is None, worker.log[-3000:]
        assert time.monotonic() < deadline, worker.log[-3000:]
        time.sleep(0.1)
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

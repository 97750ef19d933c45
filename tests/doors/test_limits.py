"""What the doors do with bad input, load and deadlines: every caller's mistake is a 4xx or
INVALID_ARGUMENT / NOT_FOUND naming what was wrong; a full queue is 429 /
RESOURCE_EXHAUSTED; a passed deadline is 504 / DEADLINE_EXCEEDED; concurrent callers share
batches; SIGTERM answers what is in flight and exits 0."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest

from pipeline.serve._proto import (
    inference_pb2,
    inference_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)

from .conftest import MLP, Server
from .test_http import ROWS, ort_outputs

ROW = ROWS[0].tolist()
TAIL = b", 1.0" * 29

# body of POST /predict -> (status, words the error must contain)
PREDICT_CASES: dict[str, tuple[bytes, int, str]] = {
    "non-utf8": (b'{"data": "\xff\xfe"}', 400, "JSON"),
    "empty": (b"", 400, "JSON"),
    "truncated-json": (b'{"data": [1, 2', 400, "JSON"),
    "not-an-object": (b"[1, 2, 3]", 400, "JSON object"),
    "missing-features": (b"{}", 400, "features is required"),
    "wrong-count": (b'{"data": [1.0, 2.0]}', 400, "30 values"),
    "unknown-named-feature": (b'{"features": {"bogus": 1.0}}', 400, "unknown name 'bogus'"),
    "string-feature": (b'{"data": ["a"' + TAIL + b"]}", 400, "features[0] must be a finite number, got string"),
    "null-feature": (b'{"data": [null' + TAIL + b"]}", 400, "features[0] must be a finite number, got null"),
    "infinite": (b'{"data": [1e400' + TAIL + b"]}", 400, "JSON"),
    "float32-overflow": (b'{"data": [1e39' + TAIL + b"]}", 400, "float32"),
    "too-deep": (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "depth limit"),
    "data-and-features": (b'{"data": [1.0], "features": [1.0]}', 400, "not both"),
    "unknown-model": (json.dumps({"data": ROW, "model": "nope"}).encode(), 404, "'nope' is not in the store"),
    "unknown-version": (json.dumps({"data": ROW, "version": "99"}).encode(), 404, "no version '99'"),
    "path-trick-model": (json.dumps({"data": ROW, "model": "../../etc/passwd"}).encode(), 400, "plain"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_each_bad_predict_request_is_refused_with_a_reason(server: Server, case: str) -> None:
    body, status, words = PREDICT_CASES[case]
    reply = httpx.post(f"{server.url}/predict", content=body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"], reply.text
    good = httpx.post(f"{server.url}/predict", json={"data": ROW})
    assert good.status_code == 200, "the server keeps answering others"


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: Server) -> None:
    reply = httpx.post(f"{server.url}/predict", content=b" " * (4 * 1024 * 1024 + 1))
    assert reply.status_code == 413
    assert "4194304" in reply.json()["error"]


@pytest.mark.parametrize(
    ("instances", "words"),
    [([ROW, [1.0]], "instances[1]: features must have 30 values"),
     ([ROW, {"bogus": 1.0}], "instances[1]: features has unknown name"),
     ("not rows", "instances must be an array")],
)  # fmt: skip
def test_bad_instances_name_the_instance(server: Server, instances: object, words: str) -> None:
    reply = httpx.post(f"{server.url}/v1/models/{MLP}:predict", json={"instances": instances})
    assert reply.status_code == 400 and words in reply.json()["error"], reply.text


def _infer_json(name: str = "features", shape: list[int] | None = None, data: object = None,
                datatype: str = "FP32") -> dict[str, object]:  # fmt: skip
    return {"inputs": [{"name": name, "shape": shape or [1, 30], "datatype": datatype,
                        "data": ROW if data is None else data}]}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "words"),
    [(_infer_json(name="input"), "got unknown input 'input'"),
     (_infer_json(shape=[1, 29], data=ROW[:29]), "shape must be [rows, 30]"),
     (_infer_json(shape=[2, 30]), "holds 60 elements, data has 30"),
     (_infer_json(data=[1e39, *ROW[1:]]), "row 0 column 0 must be within float32"),
     (_infer_json(datatype="BYTES", data=["x"] * 30), "must be numeric"),
     (_infer_json(datatype="FP8"), "datatype must be one of"),
     ({"inputs": "x"}, "inputs array")],
)  # fmt: skip
def test_bad_oip_requests_name_the_tensor(
    server: Server, body: dict[str, object], words: str
) -> None:
    reply = httpx.post(f"{server.url}/v2/models/{MLP}/infer", content=json.dumps(body).encode())
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"], reply.text


def test_bad_binary_tensors_are_refused(server: Server) -> None:
    header = json.dumps({"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 120}}]}).encode()  # fmt: skip
    url = f"{server.url}/v2/models/{MLP}/infer"
    short = httpx.post(url, content=header + b"\0" * 100,
                       headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    too_long = httpx.post(url, content=header, headers={"Inference-Header-Content-Length": "9999"})
    assert (
        too_long.status_code == 400
        and "Inference-Header-Content-Length" in too_long.json()["error"]
    )
    nan = np.asarray([ROW], dtype="<f4")
    nan[0, 3] = np.inf
    bad = httpx.post(url, content=header + nan.tobytes(),
                     headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert (
        bad.status_code == 400 and "row 0 column 3 must be a finite number" in bad.json()["error"]
    )


def test_grpc_refusals_carry_status_and_reason(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        predictor = prediction_pb2_grpc.PredictorStub(channel)
        oip = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        cases: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
            (lambda: predictor.Predict(prediction_pb2.PredictRequest(features=[float("nan"), *ROW[1:]])),
             grpc.StatusCode.INVALID_ARGUMENT, "finite"),
            (lambda: predictor.Predict(prediction_pb2.PredictRequest(features=ROW, model="../x")),
             grpc.StatusCode.INVALID_ARGUMENT, "plain"),
            (lambda: predictor.Predict(prediction_pb2.PredictRequest(features=ROW, version="99")),
             grpc.StatusCode.NOT_FOUND, "no version '99'"),
            (lambda: oip.ModelInfer(_grpc_infer([1, 29], b"\0" * 116)),
             grpc.StatusCode.INVALID_ARGUMENT, "shape must be [rows, 30]"),
            (lambda: oip.ModelInfer(_grpc_infer([1, 30], b"\0" * 7)),
             grpc.StatusCode.INVALID_ARGUMENT, "takes 120 bytes, got 7"),
            (lambda: oip.ModelMetadata(inference_pb2.ModelMetadataRequest(name="nope")),
             grpc.StatusCode.NOT_FOUND, "'nope' is not in the store"),
        ]  # fmt: skip
        for call, code, words in cases:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == code, refused.value.details()
            assert words in refused.value.details()
        assert predictor.Predict(prediction_pb2.PredictRequest(features=ROW)).model == MLP


def _grpc_infer(shape: list[int], raw: bytes) -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name=MLP)
    request.inputs.add(name="features", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_a_full_queue_answers_429_and_resource_exhausted(serve: Callable[..., Server]) -> None:
    server = serve("--max-queue", "1", "--max-wait-ms", "1500", "--dispatch", "when-due")
    waiting = threading.Thread(target=httpx.post, args=(f"{server.url}/predict",),
                               kwargs={"json": {"data": ROW}, "timeout": 10})  # fmt: skip
    waiting.start()
    time.sleep(0.3)  # the first row now waits for its batch to fill
    reply = httpx.post(f"{server.url}/predict", json={"data": ROW})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
    assert "max_queue_rows" in reply.json()["error"]
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as full:
        prediction_pb2_grpc.PredictorStub(channel).Predict(
            prediction_pb2.PredictRequest(features=ROW)
        )
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    waiting.join()


def test_a_passed_deadline_is_504_and_deadline_exceeded(serve: Callable[..., Server]) -> None:
    server = serve("--max-wait-ms", "800", "--dispatch", "when-due")
    started = time.monotonic()
    reply = httpx.post(f"{server.url}/predict", json={"data": ROW},
                       headers={"X-Request-Timeout-Ms": "100"})  # fmt: skip
    assert reply.status_code == 504, reply.text
    assert "deadline" in reply.json()["error"]
    assert time.monotonic() - started < 5
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as late:
        prediction_pb2_grpc.PredictorStub(channel).Predict(
            prediction_pb2.PredictRequest(features=ROW), timeout=0.1
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the expired rows are counted when their batch is cut (--max-wait-ms 800 after them)
    log = server.await_log(lambda log: _expired_rows(log) >= 1)
    assert _expired_rows(log) >= 1, "the rows whose deadline passed were not run"


def _expired_rows(log: str) -> int:
    return sum(int(n) for n in re.findall(r"expired (\d+)", log))


def test_64_concurrent_callers_are_answered_correctly(serve: Callable[..., Server]) -> None:
    server = serve("--max-wait-ms", "20")
    label, probabilities = ort_outputs(MLP, ROWS)

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:  # fmt: skip
            calls = [
                client.post("/predict", json={"data": ROWS[i % 8].tolist()}) for i in range(64 * 4)
            ]
            return await asyncio.gather(*calls)

    replies = asyncio.run(call_all())
    for i, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        assert reply.json()["prediction"] == int(label[i % 8])
        assert reply.json()["confidence"] == pytest.approx(
            float(probabilities[i % 8].max()), abs=1e-6
        )


def test_callers_who_come_at_once_after_a_lone_caller_share_batches(
    serve: Callable[..., Server],
) -> None:
    # Each burst's 64 requests are written before the server reads any of them, so they
    # wait together whatever the client's speed (an HTTP client slower than the server
    # hands it one request at a time, and then there is nothing to batch). The lone caller
    # first has its rows run at once on the doors' thread, which never lets a second request
    # in beside them: a request that waits on the engine's thread now and then must see the
    # burst, or it would run one row at a time for as long as it lasted.
    server = serve()
    body = json.dumps({"data": ROW}).encode()
    request = (
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    address = ("127.0.0.1", server.http_port)
    with socket.create_connection(address, timeout=30) as lone:
        for _ in range(50):
            lone.sendall(request)
            assert _http_status(lone) == 200
    callers = [socket.create_connection(address, timeout=30) for _ in range(64)]
    try:
        for _ in range(8):
            for caller in callers:
                caller.sendall(request)
            assert [_http_status(caller) for caller in callers] == [200] * 64
    finally:
        for caller in callers:
            caller.close()
    log = server.next_stats_line()  # it counts every batch of the calls above
    batches = [float(b) for b in re.findall(r"mean batch ([\d.]+)", log)]
    assert max(batches) > 1.0, f"rows of concurrent callers did not share batches: {batches}"


def _http_status(connection: socket.socket) -> int:
    """Read the one HTTP/1.1 response awaited on `connection` (a body of Content-Length
    bytes, or chunked, as uvicorn sends it); return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(connection, data)
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        while not body.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
            body += _received(connection, data + body)
    else:
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length, head
        while len(body) < int(length[1]):
            body += _received(connection, data + body)
    return int(head.split(b" ", 2)[1])


def _received(connection: socket.socket, so_far: bytes) -> bytes:
    chunk = connection.recv(65536)
    assert chunk, f"the server closed the connection after {so_far!r}"
    return chunk


@pytest.mark.parametrize("callers", [64, 200])
def test_grpc_callers_sharing_one_connection_wait_instead_of_failing(
    server: Server, callers: int
) -> None:
    """At the defaults (100 streams per connection), callers on one channel all get answers:
    up to the limit they run at once, beyond it they wait in the client's queue; none gets
    UNAVAILABLE (RST_STREAM REFUSED_STREAM) for a stream the server has already answered."""
    answers = asyncio.run(_predict_on_one_channel(server.grpc_target, callers, 1000 // callers))
    failed = Counter(a for a in answers if a != "right")
    assert not failed, f"{sum(failed.values())} of {len(answers)} calls failed: {dict(failed)}"


def test_max_concurrent_streams_bounds_the_calls_running_on_one_connection(
    serve: Callable[..., Server],
) -> None:
    server = serve("--max-concurrent-streams", "2", "--max-wait-ms", "100")
    answers = asyncio.run(_predict_on_one_channel(server.grpc_target, 16, 3))
    assert answers == ["right"] * 48, Counter(answers)
    log = server.next_stats_line()  # it counts every batch of the calls above
    batches = [float(b) for b in re.findall(r"mean batch ([\d.]+)", log)]
    assert 0 < max(batches) <= 2.0, f"more than 2 calls ran at once: mean batches {batches}"


async def _predict_on_one_channel(target: str, callers: int, calls: int) -> list[str]:
    """`callers` callers, `calls` calls each, on one channel: "right" for each right
    prediction, else what went wrong."""
    label, _ = ort_outputs(MLP, ROWS)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_pb2_grpc.PredictorStub(channel)

        async def caller(c: int) -> list[str]:
            answers = []
            for i in range(c, c + calls):
                request = prediction_pb2.PredictRequest(features=ROWS[i % 8].tolist())
                try:
                    reply = await stub.Predict(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    answers.append(f"{exc.code().name}: {exc.details()}")
                else:
                    answers.append("right" if reply.prediction == label[i % 8] else "wrong")
            return answers

        per_caller = await asyncio.gather(*(caller(c) for c in range(callers)))
    return [answer for answers in per_caller for answer in answers]


@pytest.mark.alone  # the request must be in flight 0.3 s after it is sent
def test_sigterm_answers_what_is_in_flight_and_exits_0(serve: Callable[..., Server]) -> None:
    server = serve("--max-wait-ms", "1500", "--dispatch", "when-due")
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{server.url}/predict", json={"data": ROW}, timeout=15)))  # fmt: skip
    waiting.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    waiting.join(15)
    code, took = server.stop()
    assert answers and answers[0].status_code == 200, answers
    assert code == 0 and took < 10, server.log[-2000:]

"""Models with named, typed inputs at the doors of a real `pipeline serve`: Open Inference
Protocol v2 over HTTP (JSON and binary tensors) and gRPC (typed and raw contents), and the
v1 ``:predict`` rows as objects; results equal ONNX Runtime run directly on the same feed."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.serve._proto import (
    inference_pb2,
    inference_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)
from tests.modelfactory import identity_model, sequence_model, two_input_model

from .conftest import Server, start_server

X = np.array([[0.5, 1.25, -2.0], [1, 2, 3]], dtype=np.float32)
CAT = np.array([[7], [3]], dtype=np.int64)
KINDS = {  # input name -> (datatype, one row's two values): every element type
    "i8": ("INT8", [-128, 127]),
    "i16": ("INT16", [-32768, 32767]),
    "i32": ("INT32", [-(2**31), 7]),
    "i64": ("INT64", [2**62, -5]),
    "u8": ("UINT8", [0, 255]),
    "u16": ("UINT16", [0, 65535]),
    "u32": ("UINT32", [2**32 - 1, 1]),
    "u64": ("UINT64", [2**63 + 5, 1]),
    "f16": ("FP16", [1.5, -2.25]),
    "f32": ("FP32", [0.5, -1.25]),
    "f64": ("FP64", [0.1, 1e300]),
    "b": ("BOOL", [True, False]),
    "s": ("BYTES", ["DE", "naïve"]),
}
DTYPES = {"INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
          "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4",
          "FP64": "<f8", "BOOL": "?"}  # fmt: skip


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("typed")
    models = root / "models"
    two_input_model(models / "rec" / "1")
    sequence_model(models / "seq" / "1")
    identity_model(models / "kinds" / "1", {k: (d, [2]) for k, (d, _) in KINDS.items()})
    running = start_server(root / "serve.log", "--models", str(models), "--default-model", "rec")
    yield running
    running.stop()


def _ort(server_models: Path, name: str, feed: dict[str, np.ndarray]) -> list[Any]:
    session = ort.InferenceSession(str(server_models / name / "1" / "model.onnx"))
    return list(session.run(None, feed))


def _models(server: Server) -> Path:
    return Path(server.log_path).parent / "models"


def test_metadata_lists_every_input_and_output_with_its_datatype(typed: Server) -> None:
    doc = httpx.get(f"{typed.url}/v2/models/rec").json()
    assert doc["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "cat", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert doc["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    seq = httpx.get(f"{typed.url}/v2/models/seq").json()
    assert seq["inputs"] == [{"name": "window", "datatype": "FP32", "shape": [-1, -1, 2]}]


def test_v2_json_with_two_typed_inputs_equals_onnx_runtime(typed: Server) -> None:
    body = {
        "inputs": [
            {"name": "cat", "datatype": "INT64", "shape": [2, 1], "data": CAT.ravel().tolist()},
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.tolist()},
        ]
    }
    reply = httpx.post(f"{typed.url}/v2/models/rec/infer", json=body)
    assert reply.status_code == 200, reply.text
    (score,) = reply.json()["outputs"]
    (expected,) = _ort(_models(typed), "rec", {"x": X, "cat": CAT})
    assert score["datatype"] == "FP32" and score["shape"] == [2, 1]
    assert np.asarray(score["data"], dtype=np.float32).tolist() == expected.ravel().tolist()


def test_v2_binary_tensors_of_every_kind_come_back_in_their_own_datatype(typed: Server) -> None:
    inputs, blobs = [], []
    for name, (datatype, values) in KINDS.items():
        if datatype == "BYTES":
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
        else:
            blob = np.array([values], dtype=DTYPES[datatype]).tobytes()
        inputs.append({"name": name, "datatype": datatype, "shape": [1, 2],
                       "parameters": {"binary_data_size": len(blob)}})  # fmt: skip
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    reply = httpx.post(
        f"{typed.url}/v2/models/kinds/infer",
        content=header + b"".join(blobs),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    for name, (datatype, values) in KINDS.items():
        out = outputs[f"{name}_out"]
        assert (out["datatype"], out["shape"]) == (datatype, [1, 2]), name
        got = out["data"]
        if datatype == "FP16":
            got = [float(np.float16(v)) for v in got]
        assert got == values, name


def test_v2_sequence_model_takes_a_window_of_any_length(typed: Server) -> None:
    window = np.arange(10, dtype=np.float32).reshape(1, 5, 2)
    body = {"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 5, 2],
                        "data": window.ravel().tolist()}]}  # fmt: skip
    reply = httpx.post(f"{typed.url}/v2/models/seq/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [45.0]


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}], "missing input 'cat'"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
          {"name": "cat", "datatype": "FP32", "shape": [1, 1], "data": [1]}], "is INT64, got FP32"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
          {"name": "cat", "datatype": "INT64", "shape": [1, 1], "data": [1.7]}], "got 1.7"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, "3"]},
          {"name": "cat", "datatype": "INT64", "shape": [1, 1], "data": [1]}], "must hold numbers"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
          {"name": "cat", "datatype": "INT64", "shape": [1, 1], "data": [1]}], "shape [rows, 3]"),
        ([{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()},
          {"name": "cat", "datatype": "INT64", "shape": [1, 1], "data": [1]}], "same number of rows"),
    ],
    ids=["missing", "wrong-datatype", "fraction", "string-number", "wrong-shape", "rows-differ"],
)  # fmt: skip
def test_v2_bad_typed_inputs_are_400_with_the_reason(
    typed: Server, inputs: list[dict[str, Any]], words: str
) -> None:
    reply = httpx.post(f"{typed.url}/v2/models/rec/infer", json={"inputs": inputs})
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_grpc_typed_and_raw_contents_equal_onnx_runtime(typed: Server) -> None:
    with grpc.insecure_channel(typed.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="rec"))
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("x", "FP32", [-1, 3]), ("cat", "INT64", [-1, 1])
        ]  # fmt: skip
        typed_request = inference_pb2.ModelInferRequest(model_name="rec")
        x = typed_request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        x.contents.fp32_contents.extend(X.ravel().tolist())
        cat = typed_request.inputs.add(name="cat", datatype="INT64", shape=[2, 1])
        cat.contents.int64_contents.extend(CAT.ravel().tolist())
        raw_request = inference_pb2.ModelInferRequest(model_name="rec")
        raw_request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        raw_request.inputs.add(name="cat", datatype="INT64", shape=[2, 1])
        raw_request.raw_input_contents.extend([X.tobytes(), CAT.astype("<i8").tobytes()])
        (expected,) = _ort(_models(typed), "rec", {"x": X, "cat": CAT})
        for request in (typed_request, raw_request):
            reply = stub.ModelInfer(request)
            got = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 1)
            assert got.tolist() == expected.tolist()
        fields = {"INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}  # fmt: skip
        typed_kinds = inference_pb2.ModelInferRequest(model_name="kinds")
        raw_kinds = inference_pb2.ModelInferRequest(model_name="kinds")
        for name, (datatype, values) in KINDS.items():
            tensor = typed_kinds.inputs.add(name=name, datatype=datatype, shape=[1, 2])
            if datatype in fields:
                getattr(tensor.contents, fields[datatype]).extend(
                    [v.encode() for v in values] if datatype == "BYTES" else values
                )
            raw_kinds.inputs.add(name=name, datatype=datatype, shape=[1, 2])
            raw_kinds.raw_input_contents.append(
                b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
                if datatype == "BYTES"
                else np.array([values], dtype=DTYPES[datatype]).tobytes()
            )
        with pytest.raises(grpc.RpcError) as refused:  # FP16 has no typed contents field
            stub.ModelInfer(typed_kinds)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 tensors must come as raw_input_contents" in (refused.value.details() or "")
        reply = stub.ModelInfer(raw_kinds)
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            datatype, values = KINDS[out.name.removesuffix("_out")]
            assert out.datatype == datatype and list(out.shape) == [1, 2], out.name
            if datatype == "BYTES":
                got: list[Any] = [raw[4:6].decode(), raw[10:].decode()]
                assert got == values
            else:
                got = np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()
                want = [float(np.float16(v)) for v in values] if datatype == "FP16" else values
                assert got == want, out.name


def test_v1_rows_as_objects_and_the_seed_api_refuses_a_typed_model(typed: Server) -> None:
    rows = [{"x": X[0].tolist(), "cat": 7}, {"x": X[1].tolist(), "cat": [3]}]
    reply = httpx.post(f"{typed.url}/v1/models/rec:predict", json={"instances": rows})
    assert reply.status_code == 200, reply.text
    (expected,) = _ort(_models(typed), "rec", {"x": X, "cat": CAT})
    assert np.asarray(reply.json()["predictions"], dtype=np.float32).tolist() == expected.tolist()

    seed = httpx.post(f"{typed.url}/predict", json={"features": [1, 2, 3]})
    assert seed.status_code == 400
    assert "POST /v2/models/rec/infer" in seed.json()["error"]
    with grpc.insecure_channel(typed.grpc_target) as channel:
        stub = prediction_pb2_grpc.PredictorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(prediction_pb2.PredictRequest(features=[1, 2, 3], model="rec"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_v1_columnar_inputs_answer_columnar_outputs(typed: Server) -> None:
    body = {"inputs": {"x": X.tolist(), "cat": CAT.tolist()}}
    reply = httpx.post(f"{typed.url}/v1/models/rec:predict", json=body)
    assert reply.status_code == 200, reply.text
    (expected,) = _ort(_models(typed), "rec", {"x": X, "cat": CAT})
    assert np.asarray(reply.json()["outputs"], dtype=np.float32).tolist() == expected.tolist()

    window = [[[1, 2], [3, 4]]]  # one row of the sequence model's only input
    reply = httpx.post(f"{typed.url}/v1/models/seq:predict", json={"inputs": window})
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"] == [10.0]
    ragged = httpx.post(f"{typed.url}/v1/models/rec:predict",
                        json={"inputs": {"x": X.tolist(), "cat": [1]}})  # fmt: skip
    assert ragged.status_code == 400
    assert "one value per row, of one length" in ragged.json()["error"]


def test_serve_with_only_a_broken_model_is_live_but_not_ready_and_says_why(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    models = tmp_path / "store"
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = serve("--models", str(models), "--default-model", "broken", wait_ready=False)
    # the failed load is logged before the doors open: wait for both
    log = server.await_log(lambda log: "not ready:" in log and "HTTP door listening" in log, 60)
    assert server.proc.poll() is None and "HTTP door listening" in log, log
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert "the default model broken cannot be loaded" in ready.text
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_the_repository_index_and_kserve_v1_model_status(typed: Server) -> None:
    index = httpx.post(f"{typed.url}/v2/repository/index").json()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("kinds", "1", "READY"), ("rec", "1", "READY"), ("seq", "1", "READY")
    }  # fmt: skip
    assert httpx.get(f"{typed.url}/v1/models/rec").json() == {"name": "rec", "ready": True}
    missing = httpx.get(f"{typed.url}/v1/models/nope")
    assert missing.status_code == 404 and "not in the store" in missing.json()["error"]

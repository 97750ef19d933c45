"""A caller's mistakes are 400 / INVALID_ARGUMENT with a reason, never a 500: the cases an
outside review found, values the doors must refuse rather than cast, and a fuzz test over
the OIP JSON, binary and gRPC forms against a real `pipeline serve`."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.serve._proto import inference_pb2, inference_pb2_grpc

from .conftest import MLP, Server

ROW = [0.5] * 30


def _tensor(**changes: Any) -> dict[str, Any]:
    return {"name": "features", "datatype": "FP32", "shape": [1, 30], "data": ROW, **changes}


MISTAKES = {  # body of POST /v2/models/<MLP>/infer -> words the 400's reason holds
    "request-parameters": ({"inputs": [_tensor()], "parameters": [1]}, "parameters must be an object"),
    "input-parameters": ({"inputs": [_tensor(parameters="x")]}, "parameters must be an object"),
    "output-parameters": (
        {"inputs": [_tensor()], "outputs": [{"name": "label", "parameters": 5}]},
        "parameters must be an object",
    ),
    "int8-300": ({"inputs": [_tensor(datatype="INT8", data=[300] * 30)]}, "from -128 to 127"),
    "uint8-negative": ({"inputs": [_tensor(datatype="UINT8", data=[-1] * 30)]}, "from 0 to 255"),
    "shape-overflow": (
        {"inputs": [_tensor(shape=[4611686018427387904, 4], data=[])]},
        "more than 2147483648 elements",
    ),
    "boolean-dimension": ({"inputs": [_tensor(shape=[True, 30])]}, "list of sizes >= 0"),
    "deep-bytes": (  # as text: Python's json cannot write 1,000 levels
        b'{"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, 30], "data": '
        + b"[" * 1000 + b"]" * 1000 + b"}]}",
        "more than 64 levels deep",
    ),
    "int64-fraction": ({"inputs": [_tensor(datatype="INT64", data=[1.7] * 30)]}, "got 1.7"),
    "string-as-fp32": ({"inputs": [_tensor(data=["1"] * 30)]}, "must hold numbers, got '1'"),
    "binary-output-string": (
        {"inputs": [_tensor()], "parameters": {"binary_data_output": "false"}},
        "binary_data_output must be true or false",
    ),
    "outputs-not-a-list": ({"inputs": [_tensor()], "outputs": {"name": "x"}}, "outputs must be an array"),
}  # fmt: skip


@pytest.mark.parametrize(("body", "words"), list(MISTAKES.values()), ids=list(MISTAKES))
def test_each_mistake_is_a_400_with_its_reason(server: Server, body: Any, words: str) -> None:
    url = f"{server.url}/v2/models/{MLP}/infer"
    reply = httpx.post(url, content=body) if isinstance(body, bytes) else httpx.post(url, json=body)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_v1_with_no_instances_is_a_400(server: Server) -> None:
    reply = httpx.post(f"{server.url}/v1/models/{MLP}:predict", json={"instances": []})
    assert reply.status_code == 400
    assert "at least one row, got an empty array" in reply.json()["error"]


@pytest.mark.parametrize("shape", [[-1, 30], [1 << 40, 1 << 40]], ids=["negative", "huge"])
def test_grpc_contents_with_impossible_dimensions_are_invalid_argument(
    server: Server, shape: list[int]
) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = inference_pb2.ModelInferRequest(model_name=MLP)
        tensor = request.inputs.add(name="features", datatype="FP32", shape=shape)
        tensor.contents.fp32_contents.extend(ROW)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


def test_grpc_typed_contents_beside_raw_contents_are_refused(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = inference_pb2.ModelInferRequest(model_name=MLP)
        tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 30])
        tensor.contents.fp32_contents.extend(ROW)
        request.raw_input_contents.append(np.asarray([ROW], dtype="<f4").tobytes())
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "typed contents beside raw_input_contents" in (refused.value.details() or "")


# -- fuzz: no request shape makes a 500 ---------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_DATATYPES = st.sampled_from(
    ["FP32", "FP64", "FP16", "INT8", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "fp32", ""]
)
_TENSORS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["features", "x", ""]) | _JSON,
        "datatype": _DATATYPES | _JSON,
        "shape": st.lists(st.integers(-3, 40) | st.booleans(), max_size=3) | _JSON,
        "data": st.lists(
            st.floats() | st.integers(-(2**65), 2**65) | st.text(max_size=3), max_size=40
        )
        | _JSON,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-5, 200) | _JSON}
        )
        | _JSON,
    },
)
_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(_TENSORS, max_size=2) | _JSON,
        "outputs": st.lists(st.fixed_dictionaries({"name": _JSON}, optional={"parameters": _JSON}), max_size=2)
        | _JSON,
        "parameters": _JSON,
        "id": _JSON,
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODIES, tail=st.binary(max_size=64), announce=st.booleans())
def test_fuzzed_oip_http_requests_never_answer_500(
    server: Server, body: dict[str, Any], tail: bytes, announce: bool
) -> None:
    header = json.dumps(body, allow_nan=True).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))} if announce else {}
    reply = httpx.post(
        f"{server.url}/v2/models/{MLP}/infer",
        content=header + (tail if announce else b""),
        headers=headers,
    )
    assert reply.status_code in (200, 400), (reply.status_code, reply.text, body)
    assert "error" in reply.json() or reply.status_code == 200


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    datatype=_DATATYPES,
    shape=st.lists(st.integers(-(2**62), 2**62), max_size=3),
    values=st.lists(st.floats(width=32) | st.integers(-5, 300), max_size=40),
    raw=st.booleans(),
    blob=st.binary(max_size=160),
)
def test_fuzzed_grpc_requests_never_answer_internal_or_unknown(
    server: Server, datatype: str, shape: list[int], values: list[Any], raw: bool, blob: bytes
) -> None:
    request = inference_pb2.ModelInferRequest(model_name=MLP)
    tensor = request.inputs.add(name="features", datatype=datatype, shape=shape)
    if raw:
        request.raw_input_contents.append(blob)
    else:
        tensor.contents.fp32_contents.extend(float(v) for v in values)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()

"""The Open Inference Protocol v2 messages, for both doors: metadata, requests, responses.

HTTP requests are JSON, optionally followed by raw tensor bytes (the binary tensor
extension: the ``Inference-Header-Content-Length`` header says where the JSON ends, each
binary input says its ``binary_data_size``; outputs are returned binary when the request
asks with ``binary_data_output`` or an output's ``binary_data``). gRPC requests carry
tensors as typed ``contents`` or ``raw_input_contents``; responses always carry
``raw_output_contents``, which every client reads.

A request names every input of the model (as the ONNX graph names them), each with the
input's datatype and shape ``[rows, *per-row shape]`` (`pipeline.serve.tensors.input_array`);
a vector model's one input also takes any numeric datatype with shape ``[rows, features]``,
checked like events are (`pipeline.serve.tensors.rows_of`). Outputs carry the ONNX model's
output names, each in its own datatype (strings as BYTES); an output that is a sequence of
per-row maps (skl2onnx's ZipMap) is returned as an FP32 ``[rows, classes]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline import __version__
from pipeline.engine.models import LoadedModel
from pipeline.engine.signature import Feed
from pipeline.serve.calls import bad_input
from pipeline.serve.tensors import (
    TensorError,
    datatype_of,
    from_json_data,
    from_raw,
    input_array,
    output_array,
    rows_of,
    to_json_data,
    to_raw,
)

__all__ = [
    "InputTensor",
    "OipRequest",
    "http_response",
    "input_feed",
    "model_metadata",
    "parse_http_request",
    "server_metadata",
]

SERVER_NAME = "kafka-onnx-pipeline"
PLATFORM = "onnx_onnxv1"


@dataclass(slots=True)
class InputTensor:
    """One input tensor of a request."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class OipRequest:
    """An inference request: its id, inputs, and the outputs asked for (all if empty),
    each with whether to return it binary (None: the request's default)."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[tuple[str, bool | None]] = field(default_factory=list)
    binary_default: bool = False


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's name, version and extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata(model: LoadedModel, versions: Sequence[str] = ()) -> dict[str, Any]:
    """``GET /v2/models/<m>``: every input and output as a tensor (datatype, and shape with
    the batch axis first, -1 where any size goes), and the versions that may be requested
    (the store's)."""
    spec = model.spec
    return {
        "name": spec.name,
        "versions": list(versions) or [spec.version],
        "platform": PLATFORM,
        "inputs": [tensor.metadata() for tensor in spec.inputs],
        "outputs": [tensor.metadata() for tensor in model.outputs],
    }


def parse_http_request(body: bytes, header_length: str | None) -> OipRequest:
    """A JSON inference request, with binary tensor data after the JSON if announced."""
    json_part, blob = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad_input(
                f"Inference-Header-Content-Length must be the JSON's length, at most the body's "
                f"{len(body)} bytes, got {header_length!r}"
            )
        json_part, blob = body[: int(header_length)], body[int(header_length) :]
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"the inference request must be JSON, got: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise bad_input("the inference request must be an object with an inputs array")
    inputs, used = [], 0
    for i, tensor in enumerate(doc["inputs"]):
        parsed, size = _http_input(tensor, blob[used:], f"inputs[{i}]")
        inputs.append(parsed)
        used += size
    if used != len(blob):
        raise bad_input(
            f"{len(blob) - used} bytes of binary data follow the tensors they belong to"
        )
    parameters = _parameters(doc, "the request")
    wanted_outputs = doc.get("outputs") or []
    if not isinstance(wanted_outputs, list):
        raise bad_input(f"outputs must be an array of objects, got {type(wanted_outputs).__name__}")
    outputs = []
    for j, wanted in enumerate(wanted_outputs):
        if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
            raise bad_input(f"outputs[{j}] must be an object with a name")
        binary = _flag(_parameters(wanted, f"outputs[{j}]"), "binary_data", f"outputs[{j}]")
        outputs.append((wanted["name"], binary))
    request_id = doc.get("id")
    return OipRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_default=bool(_flag(parameters, "binary_data_output", "the request")),
    )


def _parameters(part: dict[str, Any], where: str) -> dict[str, Any]:
    """A part's ``parameters`` object ({} if absent); anything else is the caller's mistake."""
    parameters = part.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise bad_input(f"{where}: parameters must be an object, got {type(parameters).__name__}")
    return parameters


def _flag(parameters: dict[str, Any], name: str, where: str) -> bool | None:
    """A boolean parameter (None if absent): ``"false"`` is not false, so it is refused."""
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_input(f"{where}: parameter {name} must be true or false, got {value!r}")
    return value


def _http_input(tensor: object, blob: bytes, where: str) -> tuple[InputTensor, int]:
    """One JSON input and how many bytes of the binary part it used."""
    if not isinstance(tensor, dict):
        raise bad_input(f"{where} must be an object with name, shape, datatype and data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise bad_input(f"{where} must have a string name and datatype and a shape array")
    size = _parameters(tensor, where).get("binary_data_size")
    try:
        if size is None:
            return InputTensor(
                name, datatype, from_json_data(datatype, shape, tensor.get("data"), where)
            ), 0
        if type(size) is not int or size < 0 or size > len(blob):
            raise bad_input(
                f"{where}: binary_data_size must be at most the {len(blob)} bytes left, "
                f"got {size!r}"
            )
        return InputTensor(name, datatype, from_raw(datatype, shape, blob[:size], where)), size
    except TensorError as exc:
        raise bad_input(str(exc)) from None


def input_feed(inputs: Sequence[InputTensor], model: LoadedModel) -> Feed:
    """The rows of a request: one array per input of the model, named as the model names
    them, each checked against the input (`pipeline.serve.tensors`)."""
    spec = model.spec
    given = {t.name: (i, t) for i, t in enumerate(inputs)}
    expected = ", ".join(f"{t.name!r} ({t.describe()})" for t in spec.inputs)
    unknown = [t.name for t in inputs if t.name not in spec.input_index]
    missing = [name for name in spec.input_index if name not in given]
    if unknown or missing or len(given) != len(inputs):
        problem = (f"unknown input {unknown[0]!r}" if unknown else f"missing input {missing[0]!r}"
                   if missing else "an input named twice")  # fmt: skip
        raise bad_input(f"{spec.describe()} takes the inputs {expected}; got {problem}")
    feed: Feed = {}
    try:
        for tensor in spec.inputs:
            i, given_tensor = given[tensor.name]
            where = f"inputs[{i}]"
            if spec.vector:
                feed[tensor.name] = rows_of(given_tensor.array, given_tensor.datatype,
                                            spec.n_features, where, tensor.datatype)  # fmt: skip
            else:
                feed[tensor.name] = input_array(given_tensor.array, given_tensor.datatype,
                                                tensor, where)  # fmt: skip
    except TensorError as exc:
        raise bad_input(str(exc)) from None
    rows = {name: array.shape[0] for name, array in feed.items()}
    if len(set(rows.values())) > 1:
        raise bad_input(f"every input must carry the same number of rows, got {rows}")
    return feed


def selected_outputs(
    wanted: Sequence[tuple[str, bool | None]], outputs: dict[str, np.ndarray], model: LoadedModel
) -> list[tuple[str, np.ndarray, bool | None]]:
    """The outputs a request asked for (all if none), as tensors, in the asked order."""
    names = [name for name, _ in wanted] or list(outputs)
    missing = [n for n in names if n not in outputs]
    if missing:
        raise bad_input(
            f"model {model.spec.name!r} has no output {missing[0]!r}; its outputs are "
            f"{', '.join(outputs)}"
        )
    binary = dict(wanted)
    return [(n, output_array(outputs[n]), binary.get(n)) for n in names]


def http_response(
    request: OipRequest, model: LoadedModel, outputs: dict[str, np.ndarray]
) -> tuple[bytes, list[bytes]]:
    """The response's JSON part and, for outputs returned binary, their bytes in order."""
    tensors, blobs = [], []
    for name, array, binary in selected_outputs(request.outputs, outputs, model):
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if request.binary_default if binary is None else binary:
            blob = to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = to_json_data(array)
        tensors.append(tensor)
    doc: dict[str, Any] = {
        "model_name": model.spec.name,
        "model_version": model.spec.version,
        "outputs": tensors,
    }
    if request.id is not None:
        doc["id"] = request.id
    return orjson.dumps(doc), blobs

"""Talk to an Open Inference Protocol server with tritonclient and print what it saw, as JSON.

Run with the python of a venv that has ``tritonclient[http,grpc]`` and numpy (``make test``
makes one in .cache/tritonclient), not the project's: tritonclient needs protobuf<7, and its
``inference`` messages collide with the server's in one process. It imports nothing of the
project.

The command is one JSON object, as the first argument or on stdin::

    {"url": "127.0.0.1:8000", "protocol": "http" | "grpc", "model": "breast-cancer-mlp",
     "version": "",           # optional; empty: the newest
     "rows": [[...], ...],    # sent as one FP32 tensor [rows, features]
     "input": "features",     # optional: the input's name
     "binary": true,          # HTTP only: binary tensors (the extension) or JSON
     "outputs": ["label"],    # optional: the outputs to ask for; absent or null: all
     "id": "r1"}              # optional request id

It prints one JSON object: ``live``, ``ready``, ``model_ready``, ``server_metadata``,
``model_metadata`` and ``infer`` (its ``id``, ``model_name``, ``model_version`` and
``outputs``, each with ``name``, ``datatype``, ``shape``, ``binary`` and ``data`` as nested
lists). A call the server refused is ``{"error": {"status": ..., "message": ...}}``, with
tritonclient's status: the HTTP code (``"404"``) or the gRPC code (``"StatusCode.NOT_FOUND"``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 30.0


def main() -> None:
    command = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    run = _http if command["protocol"] == "http" else _grpc
    json.dump(run(command), sys.stdout)
    print()


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}


def _rows(command: dict[str, Any]) -> np.ndarray:
    return np.asarray(command["rows"], dtype=np.float32)


def _http(command: dict[str, Any]) -> dict[str, Any]:
    model, version = command["model"], command.get("version", "")
    binary = command.get("binary", True)
    client = httpclient.InferenceServerClient(
        command["url"], connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )

    def infer() -> dict[str, Any]:
        rows = _rows(command)
        tensor = httpclient.InferInput(command.get("input", "features"), list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        names = command.get("outputs")
        outputs = None
        if names is not None:
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = client.infer(model, [tensor], model_version=version, outputs=outputs,
                              request_id=command.get("id", ""))  # fmt: skip
        response = result.get_response()
        return {
            **{k: response.get(k) for k in ("id", "model_name", "model_version")},
            "outputs": [
                {
                    **{k: output[k] for k in ("name", "datatype", "shape")},
                    "binary": "binary_data_size" in output.get("parameters", {}),
                    "data": result.as_numpy(output["name"]).tolist(),
                }
                for output in response["outputs"]
            ],
        }

    try:
        return {
            "live": _outcome(client.is_server_live),
            "ready": _outcome(client.is_server_ready),
            "model_ready": _outcome(lambda: client.is_model_ready(model, version)),
            "server_metadata": _outcome(client.get_server_metadata),
            "model_metadata": _outcome(lambda: client.get_model_metadata(model, version)),
            "infer": _outcome(infer),
        }
    finally:
        client.close()


def _grpc(command: dict[str, Any]) -> dict[str, Any]:
    model, version = command["model"], command.get("version", "")
    client = grpcclient.InferenceServerClient(command["url"])

    def server_metadata() -> dict[str, Any]:
        meta = client.get_server_metadata(client_timeout=TIMEOUT_S)
        return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}

    def model_metadata() -> dict[str, Any]:
        meta = client.get_model_metadata(model, version, client_timeout=TIMEOUT_S)
        return {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": [_grpc_tensor(t) for t in meta.inputs],
            "outputs": [_grpc_tensor(t) for t in meta.outputs],
        }

    def infer() -> dict[str, Any]:
        rows = _rows(command)
        tensor = grpcclient.InferInput(command.get("input", "features"), list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)  # always raw_input_contents
        names = command.get("outputs")
        outputs = None if names is None else [grpcclient.InferRequestedOutput(n) for n in names]
        result = client.infer(model, [tensor], model_version=version, outputs=outputs,
                              request_id=command.get("id", ""), client_timeout=TIMEOUT_S)  # fmt: skip
        response = result.get_response()
        return {
            "id": response.id,
            "model_name": response.model_name,
            "model_version": response.model_version,
            "outputs": [
                {**_grpc_tensor(o), "binary": True, "data": result.as_numpy(o.name).tolist()}
                for o in response.outputs
            ],
        }

    try:
        return {
            "live": _outcome(lambda: client.is_server_live(client_timeout=TIMEOUT_S)),
            "ready": _outcome(lambda: client.is_server_ready(client_timeout=TIMEOUT_S)),
            "model_ready": _outcome(
                lambda: client.is_model_ready(model, version, client_timeout=TIMEOUT_S)
            ),
            "server_metadata": _outcome(server_metadata),
            "model_metadata": _outcome(model_metadata),
            "infer": _outcome(infer),
        }
    finally:
        client.close()


def _grpc_tensor(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


if __name__ == "__main__":
    main()

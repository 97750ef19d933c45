"""tritonclient, the standard Open Inference Protocol client, against `pipeline serve`: health,
metadata and inference over HTTP (JSON and binary tensors) and gRPC; outputs equal ONNX
Runtime's; refusals carry the status codes tritonclient reports.

tritonclient runs in a venv of its own (tests/doors/triton_client.py explains why): the one
``make test`` makes in .cache/tritonclient, or the python PIPELINE_TRITONCLIENT_PYTHON names.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import __version__

from .conftest import MLP, ROOT, Server
from .test_http import LOGREG, ROWS, ort_outputs

SCRIPT = Path(__file__).parent / "triton_client.py"
PYTHON = Path(
    os.environ.get("PIPELINE_TRITONCLIENT_PYTHON")
    or ROOT / ".cache" / "tritonclient" / "bin" / "python"
)

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(),
    reason=f"no tritonclient venv at {PYTHON}: `make test` installs it "
    "(or set PIPELINE_TRITONCLIENT_PYTHON to a python with tritonclient[http,grpc])",
)

MLP_METADATA = {
    "name": MLP,
    "versions": ["1"],
    "platform": "onnx_onnxv1",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ],
}


def run_tritonclient(server: Server, protocol: str, model: str, **command: Any) -> dict[str, Any]:
    """What triton_client.py saw: health, metadata and one inference of `model`."""
    url = server.grpc_target if protocol == "grpc" else f"127.0.0.1:{server.http_port}"
    command = {"url": url, "protocol": protocol, "model": model, "rows": ROWS.tolist(), **command}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(PYTHON), str(SCRIPT), json.dumps(command)], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("protocol", "binary", "asked", "names"),
    [
        ("http", True, None, ["label", "probabilities"]),  # all outputs, binary by default
        ("http", False, ["probabilities", "label"], ["probabilities", "label"]),
        ("grpc", True, None, ["label", "probabilities"]),  # gRPC is always raw
    ],
    ids=["http-binary", "http-json", "grpc"],
)
def test_infer_outputs_equal_onnxruntime(
    server: Server, protocol: str, binary: bool, asked: list[str] | None, names: list[str]
) -> None:
    result = run_tritonclient(server, protocol, LOGREG, binary=binary, outputs=asked, id="t-1")
    infer = result["infer"]
    assert (infer["id"], infer["model_name"], infer["model_version"]) == ("t-1", LOGREG, "1")
    assert [o["name"] for o in infer["outputs"]] == names
    assert all(o["binary"] is binary for o in infer["outputs"])
    outputs = {o["name"]: o for o in infer["outputs"]}
    label, probabilities = ort_outputs(LOGREG, ROWS)
    assert (outputs["label"]["datatype"], outputs["label"]["shape"]) == ("INT64", [len(ROWS)])
    assert outputs["label"]["data"] == label.tolist()
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [len(ROWS), 2]
    np.testing.assert_allclose(outputs["probabilities"]["data"], probabilities, atol=1e-6)


def test_health_and_metadata_are_the_same_over_http_and_grpc(server: Server) -> None:
    seen = {p: run_tritonclient(server, p, MLP, version="1") for p in ("http", "grpc")}
    for result in seen.values():
        assert (result["live"], result["ready"], result["model_ready"]) == (True, True, True)
        assert result["server_metadata"] == {
            "name": "kafka-onnx-pipeline",
            "version": __version__,
            "extensions": ["binary_tensor_data"],
        }
        assert result["model_metadata"] == MLP_METADATA


@pytest.mark.parametrize(
    ("protocol", "status"), [("http", "404"), ("grpc", "StatusCode.NOT_FOUND")]
)
def test_an_unknown_model_is_not_ready_and_not_found(
    server: Server, protocol: str, status: str
) -> None:
    result = run_tritonclient(server, protocol, "nope")
    assert result["live"] is True and result["model_ready"] is False
    for call in ("model_metadata", "infer"):
        error = result[call]["error"]
        assert error["status"] == status and "'nope'" in error["message"], call


@pytest.mark.parametrize(
    ("protocol", "status"), [("http", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")]
)
def test_a_wrong_input_name_is_invalid(server: Server, protocol: str, status: str) -> None:
    error = run_tritonclient(server, protocol, MLP, input="x")["infer"]["error"]
    assert error["status"] == status
    assert "'x'" in error["message"] and "'features'" in error["message"]

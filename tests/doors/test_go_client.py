"""A Go client of `pipeline serve`, as the seed's Go callers build it: code generated from
schemas/*.proto with the standard generators, gRPC /Predictor/Predict and HTTP POST /predict
one row at a time, and an Open Inference Protocol ModelInfer; answers equal ONNX Runtime's.

The client is tests/doors/go (main.go, with go.mod pinning grpc, protobuf and, as `tool`
lines, the protoc-gen-go and protoc-gen-go-grpc generators). The generated packages are not
committed: the fixture copies the module, installs the generators into .cache/go/bin, runs
grpcio-tools' protoc with them and builds. Go downloads and compiles the modules once (about
two minutes on a fresh machine; seconds after that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.dev.tools import _sample_rows

from .conftest import MLP, ROOT, Server
from .test_http import LOGREG, ort_outputs

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None,
    reason="the Go toolchain (`go`) is not on PATH: this test builds a Go client of the server "
    "(the project's machines have Go 1.26; install it to run this test)",
)

GO_MODULE = Path(__file__).parent / "go"
IMPORT_PATH = "example.com/pipelineclient"
PROTOS = {"prediction.proto": "predictionpb", "inference.proto": "inferencepb"}
# Both classes, confidences from 0.93 to 1 for the logistic regression.
ROWS = np.asarray(_sample_rows(), dtype=np.float32)[[0, 3, 8, 22, 28, 30]]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}")


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client, built from a copy of tests/doors/go with freshly generated gRPC code."""
    work = tmp_path_factory.mktemp("go")
    module = work / "module"
    shutil.copytree(GO_MODULE, module)
    bin_dir = ROOT / ".cache" / "go" / "bin"
    env = {**os.environ, "GOBIN": str(bin_dir),
           "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip()}  # fmt: skip
    _run(["go", "install", "tool"], module, env)  # the generators, at go.mod's versions
    mappings = ",".join(f"M{proto}={IMPORT_PATH}/{package}" for proto, package in PROTOS.items())
    options = f"module={IMPORT_PATH},{mappings}"  # the protos have no go_package
    _run([
        sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'schemas'}",
        f"--plugin=protoc-gen-go={bin_dir / 'protoc-gen-go'}",
        f"--plugin=protoc-gen-go-grpc={bin_dir / 'protoc-gen-go-grpc'}",
        f"--go_out={module}", f"--go_opt={options}",
        f"--go-grpc_out={module}", f"--go-grpc_opt={options}",
        *PROTOS,
    ], module, env)  # fmt: skip
    binary = work / "pipelineclient"
    _run(["go", "build", "-o", str(binary), "."], module, env)
    return binary


def run_client(binary: Path, server: Server, rows: list[list[float]], *flags: str) -> list[dict]:
    """The client's JSON lines for `rows`: gRPC and HTTP per row, then ModelInfer if -model."""
    done = subprocess.run(
        [str(binary), "-grpc", server.grpc_target, "-http", server.url, *flags],
        input=json.dumps(rows), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_predict_over_grpc_and_http_and_model_infer_equal_onnxruntime(
    go_client: Path, server: Server
) -> None:
    lines = run_client(go_client, server, ROWS.tolist(), "-model", LOGREG)
    label, probabilities = ort_outputs(LOGREG, ROWS)
    answers = {(line["door"], line.get("row")): line for line in lines}
    assert len(answers) == len(lines) == 2 * len(ROWS) + 1
    for i, row_label in enumerate(label.tolist()):
        for door in ("grpc", "http"):
            answer = answers[door, i]
            assert answer["prediction"] == row_label, answer
            assert answer["confidence"] == pytest.approx(probabilities[i].max(), abs=1e-6)
            assert (answer["model"], answer["version"]) == (LOGREG, "1")
            assert answer["label"] == ("malignant", "benign")[row_label]
        assert answers["http", i]["status"] == 200
    infer = answers["grpc-oip", None]
    assert (infer["id"], infer["model"], infer["version"]) == ("go-1", LOGREG, "1")
    outputs = infer["outputs"]
    assert outputs["label"] == {"datatype": "INT64", "shape": [len(ROWS)], "data": label.tolist()}
    assert outputs["probabilities"]["shape"] == [len(ROWS), 2]
    got = np.asarray(outputs["probabilities"]["data"]).reshape(len(ROWS), 2)
    np.testing.assert_allclose(got, probabilities, atol=1e-6)


def test_a_request_naming_no_model_gets_the_default(go_client: Path, server: Server) -> None:
    lines = run_client(go_client, server, ROWS[:2].tolist())
    label, probabilities = ort_outputs(MLP, ROWS[:2])
    assert [(line["door"], line["model"]) for line in lines] == [("grpc", MLP), ("http", MLP)] * 2
    for line in lines:
        assert line["prediction"] == label[line["row"]]
        assert line["confidence"] == pytest.approx(probabilities[line["row"]].max(), abs=1e-6)


def test_a_row_of_the_wrong_length_is_invalid_argument_and_400(
    go_client: Path, server: Server
) -> None:
    grpc, http, infer = run_client(go_client, server, [[1.0, 2.0]], "-model", MLP)
    assert grpc["code"] == "InvalidArgument" and "features" in grpc["message"]
    assert "must have 30 values" in grpc["message"] and "got 2" in grpc["message"]
    assert http["status"] == 400 and http["error"] == grpc["message"]
    assert infer["code"] == "InvalidArgument" and "30 features" in infer["message"]

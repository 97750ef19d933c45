"""The HTTP door of `pipeline serve`: the seed's /predict, the TF Serving batch form, and the
Open Inference Protocol v2 with JSON and binary tensors; outputs equal ONNX Runtime's."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.dev.tools import _sample_rows

from .conftest import MLP, MODELS, Server

LOGREG = "breast-cancer-logreg"
ROWS = np.asarray(_sample_rows()[:8], dtype=np.float32)


def ort_outputs(model: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(MODELS / model / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    label, probabilities = session.run(None, {"features": rows})
    return label, probabilities


def test_predict_answers_the_seed_shape_equal_to_onnxruntime(server: Server) -> None:
    label, probabilities = ort_outputs(MLP, ROWS[:1])
    reply = httpx.post(f"{server.url}/predict", json={"data": ROWS[0].tolist()})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["prediction"] == int(label[0])
    assert doc["confidence"] == pytest.approx(float(probabilities[0].max()), abs=1e-6)
    assert (doc["model"], doc["version"]) == (MLP, "1")
    assert doc["label"] == ("malignant", "benign")[int(label[0])]
    assert doc["outputs"]["probabilities"] == pytest.approx(probabilities[0].tolist(), abs=1e-6)


def test_predict_takes_features_by_name_and_a_model_and_version(server: Server) -> None:
    names = json.loads((MODELS / LOGREG / "1" / "model.json").read_text())["features"]
    named = dict(zip(names, ROWS[1].tolist(), strict=True))
    reply = httpx.post(
        f"{server.url}/predict",
        json={"features": named, "model": LOGREG, "version": "1", "id": "req-7"},
    )
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    _, probabilities = ort_outputs(LOGREG, ROWS[1:2])
    assert (doc["model"], doc["id"]) == (LOGREG, "req-7")
    assert doc["confidence"] == pytest.approx(float(probabilities[0].max()), abs=1e-6)


@pytest.mark.parametrize(
    "path", [f"/v1/models/{LOGREG}:predict", f"/v1/models/{LOGREG}/versions/1:predict"]
)
def test_v1_instances_get_one_prediction_each(server: Server, path: str) -> None:
    reply = httpx.post(f"{server.url}{path}", json={"instances": ROWS.tolist()})
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    label, probabilities = ort_outputs(LOGREG, ROWS)
    assert [p["label"] for p in predictions] == label.tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], probabilities, atol=1e-6)


def _predictions_total(server: Server, model: str) -> float:
    """pipeline_predictions_total of `model` (every version) on the door's /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    prefix = f'pipeline_predictions_total{{model="{model}",'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))  # fmt: skip


def test_door_predictions_are_counted_in_pipeline_predictions_total(server: Server) -> None:
    """Issue 26 item 8: a door's predictions count as the Kafka worker's do (per row)."""
    before = _predictions_total(server, LOGREG)
    reply = httpx.post(f"{server.url}/v1/models/{LOGREG}:predict",
                       json={"instances": ROWS[:3].tolist()})  # fmt: skip
    assert reply.status_code == 200, reply.text
    refused = httpx.post(f"{server.url}/v1/models/{LOGREG}:predict", json={"instances": [[1.0]]})
    assert refused.status_code == 400  # a refused request predicts nothing
    assert _predictions_total(server, LOGREG) == before + 3


def test_v2_health_server_and_model_metadata(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{MLP}/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{MLP}/versions/1/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code != 200
    meta = httpx.get(f"{server.url}/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    model = httpx.get(f"{server.url}/v2/models/{MLP}").json()
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    missing = httpx.get(f"{server.url}/v2/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_v2_infer_with_json_tensors(server: Server) -> None:
    body = {
        "id": "j1",
        "inputs": [{"name": "features", "shape": [8, 30], "datatype": "FP64",
                    "data": ROWS.astype(np.float64).tolist()}],
        "outputs": [{"name": "probabilities"}],
    }  # fmt: skip
    reply = httpx.post(f"{server.url}/v2/models/{MLP}/infer", json=body)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["id"] == "j1" and doc["model_name"] == MLP and doc["model_version"] == "1"
    (output,) = doc["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [8, 2]
    _, probabilities = ort_outputs(MLP, ROWS)
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(8, 2), probabilities, atol=1e-6)


def test_v2_infer_with_binary_tensors_both_ways(server: Server) -> None:
    blob = ROWS.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "features", "shape": [8, 30], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}},
                    {"name": "probabilities"}],
    }).encode()  # fmt: skip
    reply = httpx.post(
        f"{server.url}/v2/models/{MLP}/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 200, reply.text
    json_length = int(reply.headers["inference-header-content-length"])
    doc = json.loads(reply.content[:json_length])
    label_out, proba_out = doc["outputs"]
    label, probabilities = ort_outputs(MLP, ROWS)
    assert label_out["data"] == label.tolist() and "parameters" not in label_out
    size = proba_out["parameters"]["binary_data_size"]
    raw = reply.content[json_length : json_length + size]
    assert size == 8 * 2 * 4 == len(reply.content) - json_length
    got = np.frombuffer(raw, dtype="<f4").reshape(8, 2)
    np.testing.assert_allclose(got, probabilities, atol=1e-6)
    assert struct.unpack("<f", raw[:4])[0] == pytest.approx(float(probabilities[0, 0]))

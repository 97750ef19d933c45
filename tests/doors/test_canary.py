"""A canary on the doors: `POST /predict` and the gRPC Predictor split by the
``x-routing-key`` header (metadata) as the worker splits by record key, and at random
without one; a shadow never changes an answer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from pipeline.engine.rollout import Canary
from pipeline.serve._proto import prediction_pb2, prediction_pb2_grpc

from .conftest import MLP, MODELS, Server
from .test_http import ROWS


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "models"
    shutil.copytree(MODELS / MLP / "1", store / MLP / "1")
    shutil.copytree(MODELS / "breast-cancer-logreg" / "1", store / MLP / "2")
    (store / MLP / "PINNED").write_text("1\n")
    return store


def test_the_doors_split_a_canary_by_routing_key_and_at_random_without_one(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    server = serve("--models", str(_store(tmp_path)), "--canary", f"{MLP}=2:50",
                   "--shadow", f"{MLP}=2")  # fmt: skip
    canary = Canary("2", 50)
    body = {"features": ROWS[0].tolist()}
    with httpx.Client(base_url=server.url, timeout=10) as client:

        def version(key: str | None) -> str:
            headers = {"x-routing-key": key} if key is not None else {}
            answer = client.post("/predict", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["version"])

        for i in range(30):
            key = f"card-{i}"
            expected = "2" if canary.takes(key.encode()) else "1"
            assert version(key) == expected == version(key), key
        assert {version(None) for _ in range(60)} == {"1", "2"}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_pb2_grpc.PredictorStub(channel)
        for i in range(10):
            key = f"card-{i}"
            reply = stub.Predict(prediction_pb2.PredictRequest(features=ROWS[0].tolist()),
                                 metadata=(("x-routing-key", key),), timeout=10)  # fmt: skip
            assert reply.version == ("2" if canary.takes(key.encode()) else "1"), key

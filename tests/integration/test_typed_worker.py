"""Models with named, typed inputs through the Kafka worker on the real broker: a two-input
int64 + float model, a sequence model with a symbolic length and a model of every element
type; predictions equal ONNX Runtime run directly, and each bad value is one dead letter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.modelfactory import identity_model, sequence_model, two_input_model

from .conftest import Pipeline
from .kafkaio import Accounting, read_all, send

KINDS = {  # every element type -> one row's value for a per-row shape of [2]
    "FP16": [1.5, -2.25],
    "FP32": [0.5, -3.0e38],
    "FP64": [0.1, 1e300],
    "INT8": [-128, 127],
    "INT16": [-32768, 32767],
    "INT32": [7, -7],
    "INT64": [2**62, -(2**62)],
    "UINT8": [0, 255],
    "UINT16": [0, 65535],
    "UINT32": [2**32 - 1, 3],
    "UINT64": [2**63 + 5, 1],
    "BOOL": [True, False],
    "BYTES": ["DE", "card-present"],
}


def _store(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    two_input_model(models / "rec" / "1")
    sequence_model(models / "seq" / "1")
    identity_model(models / "kinds" / "1", {k.lower(): (k, [2]) for k in KINDS})
    return models


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def test_typed_models_over_kafka_equal_onnx_runtime_and_bad_values_are_dead_letters(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    p = make_pipeline(models=_store(tmp_path))
    rng = np.random.default_rng(7)
    events: list[tuple[bytes, bytes]] = []
    rec_rows, windows = [], []
    for i in range(400):
        x, cat = rng.normal(size=3).tolist(), int(rng.integers(0, 1000))
        rec_rows.append((x, cat))
        events.append((f"r{i}".encode(), orjson.dumps(
            {"id": f"rec-{i}", "model": "rec", "features": {"x": x, "cat": cat}})))  # fmt: skip
        window = rng.normal(size=(int(rng.integers(1, 5)), 2)).tolist()
        windows.append(window)
        events.append((f"s{i}".encode(), orjson.dumps(
            {"id": f"seq-{i}", "model": "seq", "features": {"window": window}})))  # fmt: skip
    kinds = {k.lower(): v for k, v in KINDS.items()}
    events.append((b"k", json.dumps({"id": "kinds", "model": "kinds", "features": kinds}).encode()))
    bad = {
        "bad-fraction": {"x": [1, 2, 3], "cat": 1.5},
        "bad-missing": {"x": [1, 2, 3]},
        "bad-string": {"x": [1, "two", 3], "cat": 1},
        "bad-shape": {"x": [1, 2], "cat": 1},
    }
    for name, features in bad.items():
        events.append(
            (name.encode(), orjson.dumps({"id": name, "model": "rec", "features": features}))
        )
    send(p.bootstrap, p.input, events)

    worker = p.start_worker()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    predictions = {r.json["id"]: r for r in out if r.topic == p.output}
    dead = {(r.headers["pipeline.error.type"] or b"").decode(): r for r in out if r.topic == p.dlq}
    acc = Accounting.of(predictions.values(), [r for r in out if r.topic == p.dlq])
    ids = [orjson.loads(v)["id"] for _, v in events]
    assert acc.lost(ids) == [] and acc.duplicates() == 0
    assert sorted(dead) == ["MissingFeature", "NonNumeric", "NotAnInteger", "WrongShape"]
    assert {r.key for r in dead.values()} == {n.encode() for n in bad}

    x = np.array([row[0] for row in rec_rows], dtype=np.float32)
    cat = np.array([[row[1]] for row in rec_rows], dtype=np.int64)
    expected = _run(p.models / "rec" / "1" / "model.onnx", {"x": x, "cat": cat})["score"]
    for i in range(len(rec_rows)):
        record = predictions[f"rec-{i}"]
        assert record.key == f"r{i}".encode()
        assert np.float32(record.json["outputs"]["score"][0]) == expected[i][0]  # float32, short
    for i, window in enumerate(windows):
        feed = {"window": np.array([window], dtype=np.float32)}
        total = _run(p.models / "seq" / "1" / "model.onnx", feed)["total"]
        # batched with other windows of its length, ONNX Runtime may sum in another order
        got = predictions[f"seq-{i}"].json["outputs"]["total"]
        assert got == pytest.approx(float(total[0]), rel=1e-6, abs=1e-6)
    echoed = predictions["kinds"].json["outputs"]
    for kind, value in KINDS.items():
        assert echoed[f"{kind.lower()}_out"] == value, kind

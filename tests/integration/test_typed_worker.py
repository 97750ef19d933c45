"""Models with named, typed inputs through the Kafka worker on the real broker: a two-input
int64 + float model, a sequence model with a symbolic length, a model of every element
type and one whose inputs take one value each (checked a column at a time, row by row in a
batch holding a bad value); predictions equal ONNX Runtime run directly, and each bad
value is one dead letter."""

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
    identity_model(models / "one" / "1", {"amount": ("FP64", [1]), "hour": ("INT64", [1]),
                                          "country": ("BYTES", []), "online": ("BOOL", [1])})  # fmt: skip
    return models


def _payment(i: int) -> dict[str, Any]:
    """One value per input; `hour` beyond float64's exact integers, so a cast would show."""
    return {"amount": i / 7, "hour": 2**62 + i, "country": f"c{i}", "online": i % 2 == 0}


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
    for i in range(300):
        one = {"id": f"one-{i}", "model": "one", "features": _payment(i)}
        events.append((f"o{i}".encode(), orjson.dumps(one)))
    bad_one = {  # each with its error type; the rows beside them are still predicted
        "one-fraction": ({"hour": 3.5}, "NotAnInteger"),
        "one-text-number": ({"amount": "1.5"}, "NonNumeric"),
        "one-number-text": ({"country": 5}, "NotAString"),
        "one-int-bool": ({"online": 1}, "NotBoolean"),
        "one-too-big": ({"hour": 2**63}, "IntegerRange"),
    }
    for name, (change, _) in bad_one.items():
        features = {**_payment(0), **change}
        events.append(
            (name.encode(), orjson.dumps({"id": name, "model": "one", "features": features}))
        )
    accepted = {"one-integral": {"hour": 4.0}, "one-listed": {"hour": [4], "country": "DE"}}
    for name, change in accepted.items():  # what the row-by-row checks accept, as before
        features = {**_payment(0), **change}
        events.append(
            (name.encode(), orjson.dumps({"id": name, "model": "one", "features": features}))
        )
    send(p.bootstrap, p.input, events)

    worker = p.start_worker()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, _ = worker.stop()

    assert code == 0, worker.log
    predictions = {r.json["id"]: r for r in out if r.topic == p.output}
    dead = {(r.key or b"").decode(): (r.headers["pipeline.error.type"] or b"").decode()
            for r in out if r.topic == p.dlq}  # fmt: skip
    acc = Accounting.of(predictions.values(), [r for r in out if r.topic == p.dlq])
    ids = [orjson.loads(v)["id"] for _, v in events]
    assert acc.lost(ids) == [] and acc.duplicates() == 0
    assert dead == {
        "bad-fraction": "NotAnInteger", "bad-missing": "MissingFeature",
        "bad-string": "NonNumeric", "bad-shape": "WrongShape",
        **{name: error_type for name, (_, error_type) in bad_one.items()},
    }  # fmt: skip

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
    for i in range(300):  # each value as its input's own type: no int through a float
        sent = _payment(i)
        outputs = predictions[f"one-{i}"].json["outputs"]
        assert outputs == {"amount_out": [sent["amount"]], "hour_out": [sent["hour"]],
                           "country_out": sent["country"], "online_out": [sent["online"]]}  # fmt: skip
    assert predictions["one-integral"].json["outputs"]["hour_out"] == [4]
    assert predictions["one-listed"].json["outputs"]["country_out"] == "DE"

"""Imported models served by the real worker on a real broker and by `pipeline serve`'s
doors: a Keras model (as a SavedModel and as a .keras file), a scikit-learn pipeline, an
XGBoost and a LightGBM booster, a pipeline over named numeric and string columns, and a
version imported while the worker runs. Predictions must equal the source
framework's own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.importer import SourceOptions, import_model
from tests.payments import fraud_pipeline, sample_frame

from .conftest import Pipeline
from .kafkaio import Record, checked, free_port, read_all, send, verify_consumer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
X, Y = load_breast_cancer(return_X_y=True)
ROWS = X.astype(np.float32)
LABELS = ("malignant", "benign")
TOLERANCE = 1e-4  # the importer's default: |tf - served| / max(1, |tf|)


def events(model: str, rows: np.ndarray, **extra: Any) -> list[tuple[bytes, bytes]]:
    run = uuid.uuid4().hex[:8]
    return [
        (
            f"entity-{i}".encode(),
            orjson.dumps({"id": f"{run}-{i}", "model": model, "features": row.tolist(), **extra}),
        )
        for i, row in enumerate(rows)
    ]


def by_row(records: list[Record]) -> dict[int, dict[str, Any]]:
    """Predictions keyed by the row index in their id."""
    return {int(r.json["id"].rsplit("-", 1)[1]): r.json for r in records}


@pytest.fixture(scope="module")
def keras_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, np.ndarray]]:
    """A small Keras classifier trained here, saved both ways and imported; and its predictions."""
    import keras

    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("keras")
    normalize = keras.layers.Normalization()
    normalize.adapt(ROWS)
    inputs = keras.Input((30,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(normalize(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(ROWS, Y, epochs=5, verbose=0)
    model.export(str(out / "saved_model"), verbose=False)
    model.save(out / "model.keras")
    store = out / "store"
    store.mkdir()
    options = SourceOptions(labels=LABELS)
    for name, source in (("tf-saved", out / "saved_model"), ("tf-keras", out / "model.keras")):
        result = import_model(source, name=name, models=store, options=options)
        print(f"{name}: {result.parity.summary()}")
        assert result.manifest["converter"]["name"] == "tf2onnx"  # type: ignore[index]
    yield store, np.asarray(model.predict(ROWS, verbose=0))


def test_keras_model_served_through_kafka_equals_tensorflow(
    make_pipeline: Callable[..., Pipeline], keras_store: tuple[Path, np.ndarray]
) -> None:
    store, expected = keras_store
    p = make_pipeline(models=store)
    sent = events("tf-saved", ROWS[:200]) + events("tf-keras", ROWS[200:400])
    send(p.bootstrap, p.input, sent)
    worker = p.start_worker()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(sent))
    assert worker.stop()[0] == 0
    assert {r.topic for r in out} == {p.output}
    for name, offset in (("tf-saved", 0), ("tf-keras", 200)):
        predictions = by_row([r for r in out if r.json["model"] == name])
        assert len(predictions) == 200
        served = np.array([predictions[i]["outputs"]["output_0"] for i in range(200)])
        tf_rows = expected[offset : offset + 200]
        assert (np.abs(served - tf_rows) / np.maximum(1, np.abs(tf_rows))).max() <= TOLERANCE
        assert [predictions[i]["label"] for i in range(200)] == [
            LABELS[j] for j in tf_rows.argmax(axis=1)
        ]


@pytest.fixture(scope="module")
def sklearn_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("sklearn") / "pipeline.joblib"
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, Y)
    joblib.dump(estimator, path)
    return path, estimator


@pytest.fixture(scope="module")
def booster_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """An XGBoost and a LightGBM classifier, saved in their native formats."""
    import lightgbm as lgb

    out = tmp_path_factory.mktemp("boosters")
    booster = xgb.XGBClassifier(n_estimators=40, max_depth=3, random_state=0).fit(X, Y)
    booster.save_model(out / "x.json")
    light = lgb.LGBMClassifier(n_estimators=40, random_state=0, verbose=-1).fit(X, Y)
    light.booster_.save_model(out / "l.txt")
    return {"xgboost": (out / "x.json", booster), "lightgbm": (out / "l.txt", light)}


def framework_labels(framework: str, model: Any) -> list[int]:
    if framework == "lightgbm":
        return (model.booster_.predict(ROWS.astype(np.float64)) > 0.5).astype(int).tolist()
    return [int(v) for v in model.predict(ROWS)]


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "lightgbm"])
def test_imported_model_served_through_kafka_gives_its_labels_on_all_569_rows(
    make_pipeline: Callable[..., Pipeline],
    sklearn_source: tuple[Path, Any],
    booster_sources: dict[str, tuple[Path, Any]],
    tmp_path: Path,
    framework: str,
) -> None:
    path, model = {"sklearn": sklearn_source, **booster_sources}[framework]
    store = tmp_path / "store"
    store.mkdir()
    options = SourceOptions(trust_pickle=True, labels=LABELS)
    import_model(path, name=f"bc-{framework}", models=store, options=options)
    p = make_pipeline(models=store)
    sent = events(f"bc-{framework}", ROWS)
    send(p.bootstrap, p.input, sent)
    worker = p.start_worker()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(sent))
    assert worker.stop()[0] == 0
    predictions = by_row([r for r in out if r.topic == p.output])
    assert len(predictions) == 569
    expected = framework_labels(framework, model)
    assert [predictions[i]["outputs"]["label"] for i in range(569)] == expected
    assert [predictions[i]["label"] for i in range(569)] == [LABELS[j] for j in expected]


def first_prediction_of_version(
    bootstrap: str, topic: str, version: str, timeout_s: float
) -> dict[str, Any] | None:
    consumer = verify_consumer(bootstrap, [topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in checked(consumer.consume(100, 0.2)):
                value = orjson.loads(message.value())
                if value["version"] == version:
                    return dict(value)
    finally:
        consumer.close()
    return None


def test_a_version_imported_while_the_worker_runs_becomes_the_default(
    make_pipeline: Callable[..., Pipeline], sklearn_source: tuple[Path, Any], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    import_model(
        sklearn_source[0], name="hot", models=store, options=SourceOptions(trust_pickle=True)
    )
    booster = tmp_path / "booster.json"
    xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, Y).save_model(booster)
    p = make_pipeline(models=store, partitions=1)
    worker = p.start_worker()
    send(p.bootstrap, p.input, events("hot", ROWS[:10]))
    assert first_prediction_of_version(p.bootstrap, p.output, "1", timeout_s=60) is not None

    imported_at = time.monotonic()
    assert import_model(booster, name="hot", models=store).version == "2"
    deadline = imported_at + 20
    found: dict[str, Any] | None = None
    while found is None and time.monotonic() < deadline:
        send(p.bootstrap, p.input, events("hot", ROWS[:5]))  # no version: the newest is meant
        found = first_prediction_of_version(p.bootstrap, p.output, "2", timeout_s=1)
    took = time.monotonic() - imported_at
    assert worker.stop()[0] == 0
    assert found is not None, f"no prediction from version 2 within 20 s:\n{worker.log[-2000:]}"
    assert took < 10
    print(f"version 2 served {took:.1f} s after its import finished")


def test_a_missing_signature_or_a_wrong_input_is_refused_naming_what_exists(
    keras_store: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from pipeline.errors import ModelError

    store, _ = keras_store
    saved_model = store.parent / "saved_model"
    before = sorted(p.name for p in store.rglob("*"))
    with pytest.raises(
        ModelError, match=r"no signature 'nope'; it has \['serve', 'serving_default'\]"
    ):
        import_model(
            saved_model, name="tf-saved", models=store, options=SourceOptions(signature="nope")
        )
    with pytest.raises(
        ModelError, match="--labels lists 3 labels, so exactly one output must be a matrix"
    ):
        import_model(
            saved_model,
            name="tf-saved",
            models=store,
            options=SourceOptions(labels=("a", "b", "c")),
        )
    assert sorted(p.name for p in store.rglob("*")) == before


def test_keras_model_served_through_the_doors_equals_tensorflow(
    keras_store: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """`pipeline serve` on the imported store: HTTP (TF Serving's batch form) and the Open
    Inference Protocol over gRPC answer what TensorFlow answers."""
    import grpc
    import httpx

    from pipeline.serve._proto import inference_pb2, inference_pb2_grpc
    from tests.doors.conftest import Server, wait_until_ready

    store, expected = keras_store
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--models", str(store),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Server(proc, http_port, grpc_port, log_path, log)
    try:
        wait_until_ready(server)
        reply = httpx.post(f"{server.url}/v1/models/tf-saved:predict",
                           json={"instances": ROWS[:100].tolist()}, timeout=30)  # fmt: skip
        assert reply.status_code == 200, reply.text
        over_http = np.array(reply.json()["predictions"])
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = inference_pb2.ModelInferRequest(model_name="tf-keras")
            request.inputs.add(name="features", datatype="FP32", shape=[100, 30])
            request.raw_input_contents.append(ROWS[100:200].astype("<f4").tobytes())
            answer = stub.ModelInfer(request, timeout=30)
        assert [o.name for o in answer.outputs] == ["output_0"]
        over_grpc = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(100, 2)
    finally:
        assert server.stop()[0] == 0
    for served, tf_rows in ((over_http, expected[:100]), (over_grpc, expected[100:200])):
        assert served.shape == tf_rows.shape
        assert (np.abs(served - tf_rows) / np.maximum(1, np.abs(tf_rows))).max() <= TOLERANCE


def test_a_column_pipeline_imported_by_the_command_is_served_through_kafka(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    source = tmp_path / "fraud.joblib"
    model = fraud_pipeline(source)
    rows = sample_frame()
    sample = tmp_path / "sample.csv"
    rows.to_csv(sample, index=False)
    store = tmp_path / "store"
    store.mkdir()
    command = [sys.executable, "-m", "pipeline", "models", "import", str(source), "--name",
               "fraud", "--trust-pickle", "--sample", str(sample), "--models", str(store)]  # fmt: skip
    imported = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert "parity: 60 rows" in imported.stdout
    p = make_pipeline(models=store)
    run = uuid.uuid4().hex[:8]
    sent = [
        (b"card", orjson.dumps({"id": f"{run}-{i}", "model": "fraud", "features": row}))
        for i, row in enumerate(rows.to_dict(orient="records"))
    ]
    send(p.bootstrap, p.input, sent)
    worker = p.start_worker()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(sent))
    assert worker.stop()[0] == 0
    predictions = by_row([r for r in out if r.topic == p.output])
    assert len(predictions) == len(rows)
    expected = model.predict_proba(rows)
    served = np.asarray([predictions[i]["outputs"]["probabilities"] for i in range(len(rows))])
    assert np.abs(served - expected).max() <= 1e-5
    assert [predictions[i]["outputs"]["label"] for i in range(len(rows))] == model.predict(
        rows
    ).tolist()

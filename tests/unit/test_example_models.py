"""The committed example models predict what scikit-learn predicts, and match their manifests.

The scikit-learn side is retrained with `scripts/make_models.py`'s own `build_models()`,
so this also shows that the committed files are what the script produces.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from pipeline.engine.codec import EventDecoder
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.names import is_plain_name

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "models"
NAMES = ["breast-cancer-gbt", "breast-cancer-logreg", "breast-cancer-mlp", "wide-mlp"]
TYPED = ["card-fraud", "ticket-topic"]  # named, typed inputs
WIDTH = {"wide-mlp": 200}  # features; the others have the breast cancer data set's 30
# ONNX Runtime computes in float32 where scikit-learn uses float64; the largest
# observed gap on this data set is about 2e-7, so 1e-5 leaves ample margin.
PROBABILITY_ATOL = 1e-5


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_models", REPO / "scripts/make_models.py")
    if spec is None or spec.loader is None:
        raise ImportError("cannot load scripts/make_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_models() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def built(make_models: ModuleType) -> dict[str, tuple[Any, bytes]]:
    models: dict[str, tuple[Any, bytes]] = make_models.build_models()
    return models


def manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name / "1" / "model.json").read_text())
    return data


def session(name: str) -> ort.InferenceSession:
    path = EXAMPLES / name / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_script_builds_exactly_the_committed_models(
    built: dict[str, tuple[Any, bytes]],
) -> None:
    assert sorted(built) == sorted(NAMES + TYPED)
    assert ModelStore(EXAMPLES).names() == sorted(NAMES + TYPED)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_predictions_equal_scikit_learn_on_the_whole_data_set(
    make_models: ModuleType, built: dict[str, tuple[Any, bytes]], name: str
) -> None:
    estimator, _ = built[name]
    x, _ = make_models.load_data(name)
    rows = x.astype(np.float32)  # what the pipeline feeds onnxruntime
    labels, probabilities = session(name).run(["label", "probabilities"], {"features": rows})
    np.testing.assert_array_equal(labels, estimator.predict(rows))
    np.testing.assert_array_equal(probabilities.argmax(axis=1), estimator.predict(rows))
    np.testing.assert_allclose(
        probabilities, estimator.predict_proba(rows), rtol=0, atol=PROBABILITY_ATOL
    )


@pytest.mark.parametrize("name", NAMES + TYPED)
def test_manifest_sha256_matches_the_committed_file(name: str) -> None:
    data = (EXAMPLES / name / "1" / "model.onnx").read_bytes()
    assert manifest(name)["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_manifest_describes_the_data_set(make_models: ModuleType, name: str) -> None:
    content = manifest(name)
    assert len(content["features"]) == WIDTH.get(name, 30)
    assert content["features"] == make_models.feature_names(name)
    assert all(is_plain_name(f) for f in content["features"])
    assert content["labels"] == make_models.label_names(name)
    assert name == "wide-mlp" or content["labels"] == ["malignant", "benign"]
    assert content["probability_output"] == "probabilities"
    assert content["description"]


@pytest.mark.parametrize("name", NAMES)
def test_example_model_loads_through_the_cache(name: str) -> None:
    model = ModelCache(ModelStore(EXAMPLES)).get(name, "1")
    assert model.spec.n_features == WIDTH.get(name, 30)
    assert len(model.spec.labels) == 2
    assert model.input_name == "features"
    assert model.output_names == ("label", "probabilities")


def _feed(frame: Any) -> dict[str, np.ndarray]:
    """A DataFrame's columns as the typed model's per-input arrays, one value per row."""
    feed = {}
    for column in frame.columns:
        values = frame[[column]].to_numpy()
        feed[column] = values.astype(object) if values.dtype.kind in "OU" else values
    return feed


@pytest.mark.parametrize("name", TYPED)
def test_typed_examples_equal_scikit_learn_through_the_engine(
    make_models: ModuleType, built: dict[str, tuple[Any, bytes]], name: str
) -> None:
    estimator, _ = built[name]
    frame, _ = make_models.typed_data(name)
    cache = ModelCache(ModelStore(EXAMPLES))
    spec = cache.resolve(name, None)
    events = [
        orjson.dumps({"id": str(i), "model": name, "features": row})
        for i, row in enumerate(frame.to_dict(orient="records"))
    ]
    decoded = EventDecoder(catalog=cache).decode(events, [0] * len(events))
    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    result = run_batch(cache.get(name, spec.version), block.feed)
    assert result.failures == []
    np.testing.assert_array_equal(result.outputs["label"], estimator.predict(frame))
    np.testing.assert_allclose(
        result.outputs["probabilities"],
        estimator.predict_proba(frame),
        rtol=0,
        atol=PROBABILITY_ATOL,
    )
    direct = session(name).run(["probabilities"], _feed(frame))[0]
    np.testing.assert_array_equal(result.outputs["probabilities"], direct)
    content = manifest(name)
    assert content["labels"] == make_models.typed_labels(name)
    assert [i["name"] for i in content["inputs"]] == list(frame.columns)
    assert "features" not in content

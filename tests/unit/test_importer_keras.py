"""Importing Keras models with several inputs, as `.keras` files and as SavedModels
(issue 22, part 4): every input is kept with its datatype and per-row shape, parity runs
through per-input feeds, and the imported model serves events as Keras predicts.

TensorFlow is slow to import and to trace, so each model is built and saved once per
module; the whole module is skipped where TensorFlow is not installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.engine.codec import EventDecoder
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import ConfigError
from pipeline.importer import import_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install '.[tensorflow]')"
)
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install '.[tensorflow]')")
keras = pytest.importorskip("keras", reason="Keras is not installed (pip install '.[tensorflow]')")

ROWS = 40
FORMATS = ["keras", "saved_model"]


def two_input_model() -> Any:
    """A float32 x [3] and an int64 category id cat [1] (an embedding): a softmax over 2."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="x")
    cat = keras.Input((1,), name="cat", dtype="int64")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 2)(cat))
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([x, embedded]))
    return keras.Model({"x": x, "cat": cat}, keras.layers.Dense(2, activation="softmax")(hidden))


def two_float_model() -> Any:
    """Two float32 inputs of different widths, a [2] and a [5], added after a Dense each."""
    keras.utils.set_random_seed(1)
    a, b = keras.Input((2,), name="a"), keras.Input((5,), name="b")
    added = keras.layers.Add()([keras.layers.Dense(3)(a), keras.layers.Dense(3)(b)])
    return keras.Model([a, b], keras.layers.Dense(1)(added))


def saved(model: Any, out: Path) -> dict[str, Path]:
    """`model` saved both ways."""
    model.save(out / "model.keras")
    model.export(str(out / "saved_model"), verbose=False)
    return {"keras": out / "model.keras", "saved_model": out / "saved_model"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Path]]:
    model = two_input_model()
    return model, saved(model, tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def floats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Path]]:
    model = two_float_model()
    return model, saved(model, tmp_path_factory.mktemp("floats"))


def mixed_rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    return {"x": x, "cat": rng.integers(0, 4, size=(ROWS, 1)).astype(np.int64)}


def row_objects(feed: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One object of input name -> value per row; a [1] input as a plain number."""
    n = len(next(iter(feed.values())))
    return [
        {k: (v[i].tolist() if v.shape[1] > 1 else v[i, 0].item()) for k, v in feed.items()}
        for i in range(n)
    ]


def served(store: Path, name: str, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Decode `rows` as Kafka events and run them as the worker does; outputs in row order."""
    cache = ModelCache(ModelStore(store), max_loaded=1)
    events = [orjson.dumps({"id": str(i), "features": r}) for i, r in enumerate(rows)]
    decoded = EventDecoder(catalog=cache, default_model=name).decode(events, [0] * len(events))
    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    result = run_batch(cache.get(name, block.spec.version), block.feed)
    assert result.failures == [] and len(result.ok_positions) == len(rows)
    order = np.argsort(np.asarray(block.indices)[result.ok_positions])
    return {k: np.asarray(v)[order] for k, v in result.outputs.items()}


@pytest.mark.parametrize("form", FORMATS)
def test_a_two_input_model_keeps_both_inputs_and_serves_as_keras_predicts(
    mixed: tuple[Any, dict[str, Path]], tmp_path: Path, form: str
) -> None:
    model, paths = mixed
    feed = mixed_rows()
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps({"features": r}) + "\n" for r in row_objects(feed)))
    store = tmp_path / "models"
    store.mkdir()
    result = import_model(paths[form], name="mixed", models=store, sample=sample)
    manifest = json.loads((result.path / "model.json").read_text())
    assert manifest["inputs"] == [
        {"name": "cat", "datatype": "INT64", "shape": [1]},
        {"name": "x", "datatype": "FP32", "shape": [3]},
    ]
    assert manifest["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [2]}]
    assert "features" not in manifest and "n_features" not in manifest
    assert manifest["parity"]["rows"] == ROWS and manifest["parity"]["max_difference"] <= 1e-5
    print(f"{form}: {result.parity.summary()}")
    got = served(store, "mixed", row_objects(feed))["output_0"]
    expected = np.asarray(model.predict(feed, verbose=0))
    assert got.shape == (ROWS, 2) and np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("form", FORMATS)
def test_two_float_inputs_without_a_sample_run_parity_on_seeded_rows_of_their_shapes(
    floats: tuple[Any, dict[str, Path]], tmp_path: Path, form: str
) -> None:
    model, paths = floats
    store = tmp_path / "models"
    store.mkdir()
    result = import_model(paths[form], name="sum", models=store)
    assert result.manifest["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [2]},
        {"name": "b", "datatype": "FP32", "shape": [5]},
    ]
    assert result.parity.rows == 256 and result.parity.max_difference <= 1e-5
    rng = np.random.default_rng(3)
    feed = {"a": rng.normal(size=(9, 2)), "b": rng.normal(size=(9, 5))}
    feed = {k: v.astype(np.float32) for k, v in feed.items()}
    got = served(store, "sum", row_objects(feed))["output_0"]
    expected = np.asarray(model.predict([feed["a"], feed["b"]], verbose=0))
    assert np.abs(got - expected).max() <= 1e-5


def test_a_sample_value_that_does_not_fit_its_input_is_refused_naming_it(
    mixed: tuple[Any, dict[str, Path]], tmp_path: Path
) -> None:
    _, paths = mixed
    sample = tmp_path / "sample.jsonl"
    sample.write_text(json.dumps({"x": [0.1, 0.2, 0.3], "cat": 1.5}) + "\n")
    store = tmp_path / "models"
    store.mkdir()
    with pytest.raises(ConfigError, match=r"sample\.jsonl: .*'cat'.*INT64 \[1\].*1\.5"):
        import_model(paths["keras"], name="mixed", models=store, sample=sample)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"x": [0.1, 0.2], "cat": 1}) + "\n")
    with pytest.raises(
        ConfigError,
        match=r"short\.jsonl: sample row 0 'x' must be an array of shape \[3\] \(FP32\)",
    ):
        import_model(paths["keras"], name="mixed", models=store, sample=short)
    assert list(store.iterdir()) == []


def test_a_single_float_matrix_input_is_still_a_vector_model(tmp_path: Path) -> None:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.save(tmp_path / "one.keras")
    store = tmp_path / "models"
    store.mkdir()
    result = import_model(tmp_path / "one.keras", name="one", models=store)
    assert result.manifest["n_features"] == 4 and "inputs" not in result.manifest
    assert result.parity.rows == 256 and result.parity.max_difference <= 1e-5

"""Importing a scikit-learn pipeline over named numeric and string columns (issue 22, part 4).

A `ColumnTransformer` fitted on a DataFrame becomes one typed input per column; the
imported model is then served through the same codec and inference path as the worker's,
and must predict what the pipeline itself predicts, unseen categories included.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
from sklearn.pipeline import Pipeline

from pipeline.engine.codec import EventDecoder
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import ConfigError
from pipeline.importer import ParityError, SourceOptions, import_model
from tests.payments import MESSAGES, TEXT_SAMPLE, fraud_pipeline, sample_frame, text_pipeline


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pipeline]:
    """The fitted fraud pipeline and its joblib file."""
    path = tmp_path_factory.mktemp("fraud") / "fraud.joblib"
    return path, fraud_pipeline(path)


def import_trusted(source: Path, sample: Path, store: Path) -> None:
    """Import a trusted pickle as model "m" into a new store at `store`."""
    store.mkdir()
    options = SourceOptions(trust_pickle=True)
    import_model(source, name="m", models=store, options=options, sample=sample)


def test_a_column_pipeline_imports_with_one_typed_input_per_column(
    fraud: tuple[Path, Pipeline], tmp_path: Path
) -> None:
    path, model = fraud
    sample = tmp_path / "sample.csv"
    sample_frame().to_csv(sample, index=False)
    (tmp_path / "models").mkdir()
    result = import_model(
        path,
        name="fraud",
        models=tmp_path / "models",
        options=SourceOptions(trust_pickle=True),
        sample=sample,
    )
    manifest = json.loads((result.path / "model.json").read_text())
    assert manifest["inputs"] == [
        {"name": "amount", "datatype": "FP32", "shape": [1]},
        {"name": "hour", "datatype": "FP32", "shape": [1]},
        {"name": "country", "datatype": "BYTES", "shape": [1]},
        {"name": "channel", "datatype": "BYTES", "shape": [1]},
    ]
    assert [o["name"] for o in manifest["outputs"]] == ["label", "probabilities"]
    assert "features" not in manifest and "n_features" not in manifest
    assert manifest["parity"]["rows"] == 60 and manifest["parity"]["label_mismatches"] == 0
    assert manifest["parity"]["max_difference"] <= 1e-5
    store = str(tmp_path / "models")
    command = [sys.executable, "-m", "pipeline", "models", "list", "--models", store]
    listing = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"^fraud +1 +\* +4 inputs +scikit-learn", listing, re.M), listing


def test_the_imported_model_serves_events_as_the_pipeline_predicts(
    fraud: tuple[Path, Pipeline], tmp_path: Path
) -> None:
    path, model = fraud
    sample = tmp_path / "sample.jsonl"
    rows = sample_frame()
    records = rows.to_dict(orient="records")
    sample.write_text("".join(json.dumps({"features": r}) + "\n" for r in records))
    store = tmp_path / "models"
    store.mkdir()
    import_model(
        path, name="fraud", models=store, options=SourceOptions(trust_pickle=True), sample=sample
    )
    cache = ModelCache(ModelStore(store), max_loaded=1)
    events = [orjson.dumps({"id": str(i), "features": r}) for i, r in enumerate(records)]
    decoded = EventDecoder(catalog=cache, default_model="fraud").decode(events, [0] * len(events))
    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    served = run_batch(cache.get("fraud", block.spec.version), block.feed)
    assert served.failures == []
    expected = model.predict_proba(rows)
    got = served.outputs["probabilities"]
    order = np.asarray(block.indices)[served.ok_positions]
    assert np.abs(got - expected[order]).max() <= 1e-5
    assert (served.outputs["label"] == model.predict(rows)[order]).all()


def test_a_column_pipeline_needs_a_sample_of_named_columns(
    fraud: tuple[Path, Pipeline], tmp_path: Path
) -> None:
    path, _ = fraud
    (tmp_path / "models").mkdir()
    options = SourceOptions(trust_pickle=True)
    with pytest.raises(ConfigError, match=r"pass --sample FILE"):
        import_model(path, name="fraud", models=tmp_path / "models", options=options)
    headless = tmp_path / "headless.csv"
    headless.write_text("12.5,3,FR,web\n")
    with pytest.raises(ConfigError, match=r"must start with a header naming them"):
        import_model(
            path, name="fraud", models=tmp_path / "models", options=options, sample=headless
        )
    assert list((tmp_path / "models").iterdir()) == []


def test_a_number_where_a_string_column_is_expected_is_refused(
    fraud: tuple[Path, Pipeline], tmp_path: Path
) -> None:
    path, _ = fraud
    sample = tmp_path / "sample.jsonl"
    row: dict[str, Any] = {"amount": 1.0, "hour": 2, "country": 7, "channel": "web"}
    sample.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"column 'country' must be a string .*BYTES \[1\]"):
        import_trusted(path, sample, tmp_path / "models")


@pytest.mark.parametrize("name", [None, "message"])
def test_a_text_pipeline_takes_one_string_input_and_serves_as_it_predicts(
    tmp_path: Path, name: str | None
) -> None:
    source = tmp_path / "words.joblib"
    model = text_pipeline(source)
    field = name or "text"
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps({field: t}) + "\n" for t in TEXT_SAMPLE))
    store = tmp_path / "models"
    store.mkdir()
    options = SourceOptions(trust_pickle=True, feature_names=(name,) if name else None)
    result = import_model(source, name="words", models=store, options=options, sample=sample)
    assert result.manifest["inputs"] == [{"name": field, "datatype": "BYTES", "shape": [1]}]
    assert "features" not in result.manifest and "n_features" not in result.manifest
    cache = ModelCache(ModelStore(store), max_loaded=1)
    events = [orjson.dumps({"id": str(i), "features": {field: t}}) for i, t in
              enumerate(TEXT_SAMPLE)]  # fmt: skip
    decoded = EventDecoder(catalog=cache, default_model="words").decode(events, [0] * len(events))
    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    served = run_batch(cache.get("words", "1"), block.feed)
    assert served.failures == [] and len(served.ok_positions) == len(TEXT_SAMPLE)
    expected = model.predict_proba(TEXT_SAMPLE)
    assert np.abs(served.outputs["probabilities"] - expected).max() <= 1e-5


def test_a_text_model_that_tokenizes_accented_words_differently_is_refused(
    tmp_path: Path,
) -> None:
    """ONNX Runtime's tokenizer drops the accented words scikit-learn keeps (measured:
    a 0.139 difference for "café"); parity must catch that, not serve it."""
    source = tmp_path / "words.joblib"
    model = text_pipeline(source)
    model.fit([*MESSAGES, "café was lovely"] * 5, [1, 0, 1, 0, 1, 0, 0] * 5)
    joblib.dump(model, source)
    sample = tmp_path / "sample.jsonl"
    sample.write_text(json.dumps({"text": "café"}) + "\n")
    with pytest.raises(ParityError, match=r"parity check failed"):
        import_trusted(source, sample, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []

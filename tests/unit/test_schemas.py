"""The JSON Schemas of the wire contract: valid schemas, examples that pass, the codec agreeing.

`EXAMPLES` are the documents the README shows; the same documents live in
`schemas/examples/`, and every file there is checked against the schema its name starts with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.engine.codec import EventDecoder, RowBlock, encode_predictions
from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ModelNotFoundError

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
SCHEMA_NAMES = ("feature-event", "prediction", "dead-letter")

FEATURE_NAMES = (
    *("mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness"),
    *("mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry"),
    *("mean_fractal_dimension", "radius_error", "texture_error", "perimeter_error"),
    *("area_error", "smoothness_error", "compactness_error", "concavity_error"),
    *("concave_points_error", "symmetry_error", "fractal_dimension_error", "worst_radius"),
    *("worst_texture", "worst_perimeter", "worst_area", "worst_smoothness"),
    *("worst_compactness", "worst_concavity", "worst_concave_points", "worst_symmetry"),
    "worst_fractal_dimension",
)
ROW_74 = [
    *(13.8, 15.79, 90.43, 584.1, 0.1007, 0.128, 0.07789, 0.05069, 0.1662, 0.06566),
    *(0.2787, 0.6205, 1.957, 23.35, 0.004717, 0.02065, 0.01759, 0.009206, 0.0122, 0.00313),
    *(16.57, 20.86, 110.3, 812.4, 0.1411, 0.3542, 0.2779, 0.1383, 0.2589, 0.103),
]
ROW_20 = [
    *(13.54, 14.36, 87.46, 566.3, 0.09779, 0.08129, 0.06664, 0.04781, 0.1885, 0.05766),
    *(0.2699, 0.7886, 2.058, 23.56, 0.008462, 0.0146, 0.02387, 0.01315, 0.0198, 0.0023),
    *(15.11, 19.26, 99.7, 711.2, 0.144, 0.1773, 0.239, 0.1288, 0.2977, 0.07259),
]

EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "feature-event-array.json",
        {
            "id": "patient-0074",
            "model": "breast-cancer-mlp",
            "features": ROW_74,
            "ts": 1732550400000,
        },
    ),
    (
        "feature-event-named.json",
        {
            "id": "patient-0020",
            "model": "breast-cancer-logreg",
            "version": "1",
            "features": dict(zip(FEATURE_NAMES, ROW_20, strict=True)),
        },
    ),
    (
        "prediction.json",
        {
            "id": "patient-0074",
            "model": "breast-cancer-mlp",
            "version": "1",
            "label": "malignant",
            "score": 0.84364635,
            "outputs": {"label": 0, "probabilities": [0.84364635, 0.15635365]},
            "ts": 1732550400000,
            "predicted_at": 1732550400042,
        },
    ),
    (
        "dead-letter-headers.json",
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "pipeline.error.stage": "validate",
            "pipeline.error.type": "NonNumeric",
            "pipeline.error.message": "features[1] must be a finite number, got string '15.79'",
            "pipeline.source.topic": "features",
            "pipeline.source.partition": "2",
            "pipeline.source.offset": "1041",
            "pipeline.failed_at": "1732550400057",
        },
    ),
    (
        "feature-event-inputs.json",
        {
            "id": "payment-8812",
            "model": "card-fraud",
            "features": {"amount": 129.95, "hour": 23, "country": "DE", "channel": "web"},
        },
    ),
]

GOOD_EVENT = dict(EXAMPLES[0][1])
GOOD_PREDICTION = dict(EXAMPLES[2][1])
GOOD_HEADERS = dict(EXAMPLES[3][1])

INVALID: list[tuple[str, str, dict[str, Any]]] = [
    ("feature-event", "missing-id", {"features": [1.0]}),
    ("feature-event", "empty-id", {**GOOD_EVENT, "id": ""}),
    ("feature-event", "missing-features", {"id": "a"}),
    ("feature-event", "string-feature", {"id": "a", "features": [1.0, "2"]}),
    ("feature-event", "bool-feature", {"id": "a", "features": [1.0, True]}),
    ("feature-event", "null-feature", {"id": "a", "features": {"x": None}}),
    ("feature-event", "null-in-an-input", {"id": "a", "features": {"x": [1, None]}}),
    ("feature-event", "object-in-an-input", {"id": "a", "features": {"x": {"y": 1}}}),
    ("feature-event", "float32-overflow", {"id": "a", "features": [1e39]}),
    ("feature-event", "path-model", {**GOOD_EVENT, "model": "../models"}),
    ("feature-event", "integer-version", {**GOOD_EVENT, "version": 1}),
    ("feature-event", "float-ts", {**GOOD_EVENT, "ts": 1.5}),
    ("feature-event", "negative-ts", {**GOOD_EVENT, "ts": -1}),
    (
        "prediction",
        "missing-predicted-at",
        {k: v for k, v in GOOD_PREDICTION.items() if k != "predicted_at"},
    ),
    (
        "prediction",
        "label-without-score",
        {k: v for k, v in GOOD_PREDICTION.items() if k != "score"},
    ),
    ("prediction", "boolean-output", {**GOOD_PREDICTION, "outputs": {"label": True}}),
    ("dead-letter", "missing-stage", {k: v for k, v in GOOD_HEADERS.items() if "stage" not in k}),
    ("dead-letter", "unknown-stage", {**GOOD_HEADERS, "pipeline.error.stage": "parse"}),
    ("dead-letter", "negative-offset", {**GOOD_HEADERS, "pipeline.source.offset": "-1"}),
    ("dead-letter", "non-string-header", {**GOOD_HEADERS, "traceparent": 7}),
]

MLP = ModelSpec(
    name="breast-cancer-mlp",
    version="1",
    n_features=30,
    feature_names=FEATURE_NAMES,
    labels=("malignant", "benign"),
    probability_output="probabilities",
)
LOGREG = ModelSpec(
    name="breast-cancer-logreg",
    version="1",
    n_features=30,
    feature_names=FEATURE_NAMES,
    labels=("malignant", "benign"),
    probability_output="probabilities",
)
REGRESSOR = ModelSpec(name="risk", version="3", n_features=2)
FRAUD = ModelSpec(
    name="card-fraud",
    version="1",
    inputs=(
        TensorSpec("amount", "FP64", (1,)),
        TensorSpec("hour", "INT64", (1,)),
        TensorSpec("country", "BYTES", (1,)),
        TensorSpec("channel", "BYTES", (1,)),
    ),
)
SEQUENCE = ModelSpec(name="window", version="1", inputs=(TensorSpec("w", "FP32", (None, 2)),))


class Catalog:
    def resolve(self, name: str, version: str | None) -> ModelSpec:
        for spec in (MLP, LOGREG, REGRESSOR, FRAUD, SEQUENCE):
            if spec.name == name and version in (None, spec.version):
                return spec
        raise ModelNotFoundError(f"no model {name!r} version {version!r}")


def validator(schema_name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS_DIR / f"{schema_name}.schema.json").read_text())
    return Draft202012Validator(schema)


def schema_for(example_file: str) -> str:
    matches = [name for name in SCHEMA_NAMES if example_file.startswith(name)]
    assert len(matches) == 1, f"{example_file} does not start with one of {SCHEMA_NAMES}"
    return matches[0]


@pytest.mark.parametrize("schema_name", SCHEMA_NAMES)
def test_schema_is_a_valid_draft_2020_12_schema(schema_name: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{schema_name}.schema.json").read_text())

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(("file_name", "document"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_is_valid_and_matches_its_file(file_name: str, document: dict[str, Any]) -> None:
    validator(schema_for(file_name)).validate(document)
    assert json.loads((EXAMPLES_DIR / file_name).read_text()) == document


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_example_file_validates_against_the_schema_its_name_starts_with(path: Path) -> None:
    validator(schema_for(path.name)).validate(json.loads(path.read_text()))


def test_the_examples_folder_holds_exactly_the_examples() -> None:
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.json")) == sorted(e[0] for e in EXAMPLES)


@pytest.mark.parametrize(
    ("schema_name", "document"),
    [pytest.param(schema, doc, id=f"{schema}-{case}") for schema, case, doc in INVALID],
)
def test_invalid_document_is_rejected(schema_name: str, document: dict[str, Any]) -> None:
    assert not validator(schema_name).is_valid(document)


ACCEPTED_EVENTS: list[dict[str, Any]] = [
    EXAMPLES[0][1],
    EXAMPLES[1][1],
    {"id": "r-1", "model": "risk", "features": [0, -2.5]},
    {"id": "r-2", "model": "risk", "version": "3", "features": [1e-3, 3.4e38], "ts": 0},
    {"id": "x" * 256, "model": "risk", "features": [1, 2], "source": "ignored extra field"},
    EXAMPLES[-1][1],
    {"id": "w-1", "model": "window", "features": {"w": [[1, 2.5], [3, 4]]}},
    {"id": "w-2", "model": "window", "features": {"w": []}},
]


@pytest.mark.parametrize("document", ACCEPTED_EVENTS)
def test_every_event_the_codec_accepts_validates(document: dict[str, Any]) -> None:
    decoded = EventDecoder(catalog=Catalog()).decode([orjson.dumps(document)], [1])

    assert decoded.rejects == []
    validator("feature-event").validate(document)


def test_predictions_the_codec_encodes_validate() -> None:
    labelled = RowBlock(
        MLP, {"features": np.zeros((2, 30), dtype=np.float32)}, [0, 1], ["a", "b"], [1, 2]
    )
    plain = RowBlock(
        REGRESSOR, {"features": np.zeros((2, 2), dtype=np.float32)}, [0, 1], ["c", "d"], [3, 4]
    )
    predictions = encode_predictions(
        labelled,
        {
            "label": np.array([1, 0], dtype=np.int64),
            "probabilities": np.array([[0.2, 0.8], [0.7, 0.3]], dtype=np.float32),
        },
        predicted_at_ms=5,
    ) + encode_predictions(
        plain,
        {"variable": np.array([[0.5], [1.5]], dtype=np.float32), "rank": np.arange(2)},
        predicted_at_ms=6,
    )

    check = validator("prediction")
    for value in predictions:
        check.validate(orjson.loads(value))


@pytest.mark.parametrize("schema_name", SCHEMA_NAMES)
def test_each_schema_id_names_its_major_version(schema_name: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{schema_name}.schema.json").read_text())

    assert schema["$id"].startswith("urn:kafka-onnx-pipeline:schema:v1:")
    assert schema["description"].startswith("Version 1.")


def test_a_prediction_with_a_field_added_later_still_validates() -> None:
    # Within v1 fields are only added: a consumer validating with this schema keeps working.
    assert validator("prediction").is_valid({**GOOD_PREDICTION, "explanation": {"x": 1}})


def test_the_codec_writes_only_the_documented_prediction_fields() -> None:
    # The schema allows additions for consumers' sake; the worker itself adds none unlisted.
    block = RowBlock(MLP, np.zeros((1, 30), dtype=np.float32), [0], ["a"], [1])
    outputs = {
        "label": np.array([1], dtype=np.int64),
        "probabilities": np.array([[0.2, 0.8]], dtype=np.float32),
    }
    (value,) = encode_predictions(block, outputs, predicted_at_ms=5)
    documented = json.loads((SCHEMAS_DIR / "prediction.schema.json").read_text())["properties"]

    assert set(orjson.loads(value)) <= set(documented)


def test_a_map_output_validates() -> None:
    # A ZipMap output is written as an object of class -> probability per row.
    prediction = {**GOOD_PREDICTION, "outputs": {"probabilities": {"0": 0.25, "1": 0.75}}}

    assert validator("prediction").is_valid(prediction)


def test_a_schema_registry_framed_value_is_a_decode_dead_letter() -> None:
    # Confluent's JSON Schema serializer writes a magic byte 0 and a 4-byte schema id first.
    framed = b"\x00\x00\x00\x00\x07" + orjson.dumps(GOOD_EVENT)

    decoded = EventDecoder(catalog=Catalog()).decode([framed], [1])

    assert [(r.stage, r.error_type) for r in decoded.rejects] == [("decode", "InvalidJson")]
